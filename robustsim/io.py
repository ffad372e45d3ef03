"""Output files and folders: checked before the work, written atomically, never destroying what was there.

The rule for every output path (``--json``, ``--plot``, ``plot --out``, report folders, checkpoints):

- absent, or a regular file: written to a temporary file beside it, then renamed over it (no partial
  file ever appears);
- a symlink: written through to its target (the link stays a link), with the same rule for the target;
- anything else (a directory where a file is expected, a character or block device, a FIFO, a
  socket): refused with one line, and nothing is touched.

:func:`check_output` applies the rule (and checks the folder is writable) *before* a command starts
its computation; :func:`atomic_path` applies it again at write time. Report folders are claimed with
:class:`OutputDir`: an exclusive flock on a lock file stops a second run from interleaving, and a
folder holding another run's report is refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from robustsim.errors import InputError, OutputError, UntrustedState

_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}
LOCK_NAME = ".robustsim.lock"


def user_path(path: str | os.PathLike, what: str) -> Path:
    """:func:`robustsim.checks.user_path` with its refusal as an OutputError."""
    from robustsim.checks import user_path as checked

    try:
        return checked(path, what)
    except InputError as err:
        raise OutputError(str(err)) from None


def _target(path: Path) -> Path:
    """Where writing ``path`` lands: the final target of a symlink chain, else ``path`` itself."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _first_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _check_folder(folder: Path, for_what: Path) -> None:
    """``folder`` exists (or can be created) as a writable directory."""
    anc = _first_existing(folder)
    if not anc.is_dir():
        raise OutputError(f"cannot write {for_what}: {anc} is not a folder; choose another path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {for_what}: folder {anc} is not writable; choose another path")


def package_folders() -> tuple[Path, ...]:
    """The folders robustsim's code and shipped models are installed in (the package and the ones setup.cfg maps
    into it): never an output, however the path is spelled."""
    import importlib.util

    found = []
    for name in ("robustsim", "robustsim.attacks", "robustsim.certify", "robustsim.train"):
        spec = importlib.util.find_spec(name)
        found += [Path(os.path.realpath(p)) for p in (spec.submodule_search_locations or []) if spec] if spec else []
    return tuple(dict.fromkeys(found))


def not_in_package(path: Path, what: str) -> None:
    """OutputError when ``path`` (links followed) is inside :func:`package_folders` (the CLI's rule for outputs;
    the shipped-model recipe writes there on purpose, through the library)."""
    real = Path(os.path.realpath(path))
    for folder in package_folders():
        if real == folder or folder in real.parents:
            raise OutputError(
                f"{what} {path} is inside robustsim's installed package ({folder}): a shipped model or the code would "
                "change under every later run; choose a folder of your own"
            )


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Apply the output rule to a file path before any work; return the path writing will land on."""
    path = user_path(path, what)
    target = _target(path)
    try:
        mode = os.stat(path).st_mode  # what the path names, links followed (/dev/stdout into a pipe: a FIFO)
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise OutputError(f"cannot use {what} {path}: {err.strerror}; choose another path") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise OutputError(
            f"{what} {path} is {kind}; robustsim writes regular files only (atomically, never a partial one): "
            "write to a file, then read it"
        )
    if mode is not None and not os.access(target, os.W_OK):
        raise OutputError(f"{what} {path} is not writable; choose another path")
    _check_folder(target.parent, path)
    return target


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """A folder output: absent or a writable directory (a symlink to one is followed)."""
    path = user_path(path, what)
    target = Path(os.path.realpath(path))
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(f"{what} {path} exists and is not a folder; choose another path")
    _check_folder(target, path)
    return target


def inside(root: str | os.PathLike, path: str | os.PathLike, folder: bool = False) -> Path:
    """``path`` (under the run folder ``root``) checked for writing or reading a run's own file (``folder``: a
    folder of its own) without following a link: every existing folder between ``root`` and it is a real folder,
    and the file, if there, a regular file. A link planted in a run folder (toward another file or folder) is
    refused in one line, never followed."""
    root, path = Path(root), Path(path)
    rel = path.relative_to(root)
    if ".." in rel.parts:
        raise OutputError(f"{path} is not inside {root}; robustsim writes a run's files only inside its folder")
    here = root
    for i, part in enumerate(rel.parts):
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            break
        last = i == len(rel.parts) - 1 and not folder
        if stat.S_ISLNK(mode):
            raise OutputError(
                f"{here} is a symbolic link inside the run folder {root}; robustsim never writes or reads its files "
                "through a link: remove it"
            )
        if not last and not stat.S_ISDIR(mode):
            raise OutputError(f"{here} is not a folder; remove it or choose another --out")
        if last and not stat.S_ISREG(mode):
            raise OutputError(f"{here} is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}; remove it")
    return path


def _failed_write(path: Path, err: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {err.strerror or err}; free some space or choose another path")


@contextmanager
def atomic_path(path: str | os.PathLike, within: str | os.PathLike | None = None):
    """Yield a temporary path beside the output's target; on success it is renamed onto the target
    (see the module's rule); on failure (a full disk too: one line) it is removed and the old file is untouched.
    ``within``: the path is a run's own file inside that folder, checked by :func:`inside` (no link followed)."""
    target = check_output(path) if within is None else inside(within, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if within is not None:
        inside(within, target)  # the folders just made are real ones
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    # mkstemp makes 0600; give the final file normal permissions (a run's own file: never writable by others, so
    # state read back by read_inside is trusted whatever the umask)
    os.chmod(tmp, (0o666 if within is None else 0o644) & ~umask)
    try:
        try:
            yield Path(tmp)
        except OSError as err:
            raise _failed_write(Path(path), err) from None
        if within is None:
            check_output(path)  # the node may have changed while the work ran
        else:
            inside(within, target)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(
    path: str | os.PathLike, writer: Callable[[Path], None], within: str | os.PathLike | None = None
) -> Path:
    """Call ``writer(tmp_path)`` then atomically move the result to ``path`` (``within``: see :func:`atomic_path`)."""
    with atomic_path(path, within) as tmp:
        writer(tmp)
    return Path(path)


@contextmanager
def staging(out: Path, what: str = "the report"):
    """A fresh folder inside ``out`` for the files of one output set (and any temporary file drawing them needs),
    removed on exit; :func:`publish` moves the set into ``out``. A failure before (a full disk, a figure that cannot
    be drawn) leaves ``out`` as it was: one line, nothing written."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
    except OSError as err:
        raise OutputError(f"cannot write {what} in {out}: {err.strerror or err}; nothing was written") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(staged: list[Path], out: Path) -> list[Path]:
    """Move the complete files ``staged`` (in a :func:`staging` folder) into ``out`` under their names, in order, never
    through a link planted in ``out`` (:func:`inside`); the paths written."""
    files = [inside(out, out / f.name) for f in staged]
    for f, dest in zip(staged, files, strict=True):
        os.replace(f, dest)
    return files


def read_inside(root: str | os.PathLike, path: str | os.PathLike, limit: int = 64 << 20) -> bytes | None:
    """The bytes of a file robustsim keeps between runs (a record, a cell, a log, a pin, a stamp; None when absent):
    read without following a link (:func:`inside`, ``O_NOFOLLOW``), without blocking (a FIFO is refused), a regular
    file of at most ``limit`` bytes (else one line), and written by this user (or root) alone (another user's file,
    or one others may write, raises :class:`~robustsim.errors.UntrustedState`). Each kind is then parsed by its own
    typed schema (``cell_problem``, ``record_problem``, ``_pins_problem``...), which calls a wrong type "edited"."""
    path = inside(root, path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise OutputError(f"cannot read {path}: {err.strerror}; remove it") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"{path} is not a regular file; remove it")
        if info.st_size > limit:
            raise OutputError(f"{path} holds {info.st_size} bytes, more than a run's file ever does; remove it")
        foreign_group = info.st_mode & 0o020 and info.st_gid != os.getegid()
        foreign_owner = info.st_uid not in (os.geteuid(), 0)  # root's: an admin's shared folder
        if foreign_owner or info.st_mode & 0o002 or foreign_group:
            raise UntrustedState(f"{path} belongs to another user or others may write it, so it is not trusted")
        return fh.read(limit + 1)


def read_regular(path: str | os.PathLike, what: str, limit: int = 64 << 20) -> bytes:
    """The bytes of a file the user names (links followed), if it is a regular file of at most ``limit`` bytes:
    a FIFO, a device (``/dev/zero``) or a folder is refused in one line, never waited on or read without end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise OutputError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise OutputError(f"cannot read {what} {path} ({err.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise OutputError(f"{what} {path} is {kind}; pass a file robustsim wrote")
        if info.st_size > limit:
            raise OutputError(f"{what} {path} holds {info.st_size} bytes, more than robustsim writes; pass its file")
        return fh.read(limit + 1)


def parse_json(data: bytes | str, what: object) -> Any:
    """Strict JSON, or ValueError with one line for anything else: invalid text, nesting too deep to parse."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be a robustsim file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} is not valid JSON ({err})") from None


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN / inf float replaced by None (strict JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any, within: str | os.PathLike | None = None) -> Path:
    """Atomically write ``obj`` as strict, indented JSON (non-finite numbers become null); ``within``: a run's own
    file (:func:`atomic_path`)."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text), within)


def lock_identity() -> dict:
    """Who holds a lock, for the message a second run prints: pid and host (the kernel's lock decides, not this)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _holder(fd: int) -> tuple[str, str]:
    """(pid, " on HOST" or "") from a held lock file's first 4 KiB, whatever they hold."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        held = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        pid, host = held.get("pid"), held.get("host")
        if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**32:
            where = f" on {host}" if isinstance(host, str) and host != socket.gethostname() else ""
            return str(pid), where[:80]
    return "another process", ""


class OutputDir:
    """Claim a report folder for one run: ``with OutputDir(path, ("report.json",), overwrite) as out:``.

    Refuses (OutputError, before any work) a path that is not a folder, an unwritable folder, a folder
    that already holds one of ``products`` (another run's report) unless ``overwrite``, and a folder
    another process holds (:func:`acquire_lock`: the kernel's lock on ``.robustsim.lock``, released when its
    process ends). The lock is released on exit.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        products: Iterable[str] = (),
        overwrite: bool = False,
        hint: str = "pass --overwrite to replace it or choose another --out",
    ) -> None:
        self.path = Path(path)
        self.products, self.overwrite, self.hint = tuple(products), overwrite, hint
        self._lock: Path | None = None
        self._created = False
        self._target = self.path

    def __enter__(self) -> Path:
        target = check_output_dir(self.path)
        if not self.overwrite and target not in _HELD:  # a nested claim by this process checked already
            found = [p for p in self.products if os.path.lexists(target / p)]
            if found:
                raise OutputError(f"{self.path} already holds a run ({found[0]}); {self.hint}")
        self._created = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        self._target = target
        self._lock = acquire_lock(target)
        return target

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None
            if self._created:  # a run that wrote nothing leaves no folder behind
                with contextlib.suppress(OSError):
                    self._target.rmdir()


_HELD: dict[Path, list[int]] = {}  # folders this process holds: [the lock's fd, claim count] (claims nest)


def _open_lock(lock: Path) -> int:
    """The lock file opened for reading and writing without following a link and without blocking (a FIFO opens at
    once); OutputError in one line unless it is a regular file this user can write."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(lock, flags, 0o644)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise OutputError(f"cannot write in {lock.parent} ({err.strerror}); choose another --out") from None
        kind = "a symbolic link" if err.errno == errno.ELOOP else (err.strerror or "unusable").lower()
        raise OutputError(f"{lock} is {kind}, not a lock file; remove it or choose another --out") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise OutputError(f"{lock} is {_KINDS.get(stat.S_IFMT(mode), 'not a file')}, not a lock file; remove it")
    return fd


def acquire_lock(folder: Path) -> Path:
    """Hold ``folder/.robustsim.lock`` for this process's run: an exclusive ``flock`` the kernel releases when the
    process ends, however it ends (no pid to check, no stale lock to guess about). OutputError naming the holder if
    another process holds it. A folder this process already holds is claimed again (released when every claim is)."""
    lock = folder / LOCK_NAME
    if folder in _HELD:
        _HELD[folder][1] += 1
        return lock
    for _ in range(8):
        fd = _open_lock(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, where = _holder(fd)
            os.close(fd)
            raise OutputError(
                f"{folder} is in use by process {pid}{where} (lock {lock}); wait for it to finish or choose another "
                "--out"
            ) from None
        mine = os.fstat(fd)
        try:
            there = os.lstat(lock)
        except FileNotFoundError:
            there = None
        if there is None or (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)  # its holder removed it as we opened it: lock the file that is there now
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(lock_identity()).encode(), 0)
        _HELD[folder] = [fd, 1]
        return lock
    raise OutputError(f"cannot lock {folder}; other runs keep claiming it, choose another --out")


def release_lock(lock: Path) -> None:
    """Give one claim back; the last removes the lock file (while still holding it) and releases the lock."""
    held = _HELD.get(lock.parent)
    if held is None:
        return
    if held[1] > 1:
        held[1] -= 1
        return
    fd = _HELD.pop(lock.parent)[0]
    with contextlib.suppress(OSError):
        there, mine = os.lstat(lock), os.fstat(fd)
        if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(lock)
    os.close(fd)
