"""Output files and folders: checked before the work, written atomically, never destroying what was there.

The rule for every output path (``--json``, ``--plot``, ``plot --out``, report folders, checkpoints):

- absent, or a regular file: written to a temporary file beside it, then renamed over it (no partial
  file ever appears);
- a symlink: written through to its target (the link stays a link), with the same rule for the target;
- anything else (a directory where a file is expected, a character or block device, a FIFO, a
  socket): refused with one line, and nothing is touched.

:func:`check_output` applies the rule (and checks the folder is writable) *before* a command starts
its computation; :func:`atomic_path` applies it again at write time. Report folders are claimed with
:class:`OutputDir`: a lock file naming the holder's pid stops a second run from interleaving, and a
folder holding another run's report is refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import errno
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

from robustsim.errors import OutputError

_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}
LOCK_NAME = ".robustsim.lock"


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


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Apply the output rule to a file path before any work; return the path writing will land on."""
    path = Path(path)
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
    path = Path(path)
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
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file normal permissions
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


def read_inside(root: str | os.PathLike, path: str | os.PathLike, limit: int = 64 << 20) -> bytes | None:
    """The bytes of a run's own file (None when absent), read without following a link (:func:`inside`,
    ``O_NOFOLLOW``) and without blocking (a FIFO is refused); a file over ``limit`` bytes is refused in one line."""
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def lock_identity(pid: int | None = None) -> dict:
    """Who holds a lock: pid, host, boot and the process's start time (a reused pid has another start time)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "boot": _boot_id(), "start": _start_time(pid)}


def holder_alive(text: str) -> tuple[int, str | None]:
    """(pid, host) of the lock's writer when that very process still runs (pid 0 when the lock is stale): the
    same pid, host, boot and start time. A lock from another host cannot be checked and counts as held; an old
    lock holding only a pid counts as held while that pid runs."""
    try:
        held = json.loads(text)
    except ValueError:
        held = None
    if isinstance(held, int) or not isinstance(held, dict):
        pid = held if isinstance(held, int) else 0
        return (pid, None) if pid and _pid_alive(pid) else (0, None)
    pid, host = int(held.get("pid") or 0), held.get("host")
    if not pid:
        return 0, None
    if host != socket.gethostname():
        return pid, host
    now = lock_identity(pid)
    same = _pid_alive(pid) and held.get("boot") == now["boot"] and held.get("start") == now["start"]
    return (pid, host) if same else (0, None)


class OutputDir:
    """Claim a report folder for one run: ``with OutputDir(path, ("report.json",), overwrite) as out:``.

    Refuses (OutputError, before any work) a path that is not a folder, an unwritable folder, a folder
    that already holds one of ``products`` (another run's report) unless ``overwrite``, and a folder
    another live process holds (lock file ``.robustsim.lock`` with its pid; a stale lock whose process
    is gone is taken over). The lock is released on exit.
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


_HELD: dict[Path, int] = {}  # folders this process holds, with their claim counts (claims nest)


def acquire_lock(folder: Path) -> Path:
    """Create ``folder/.robustsim.lock`` holding this pid; OutputError if a live process holds it.
    A folder this process already holds is claimed again (released when every claim is)."""
    lock = folder / LOCK_NAME
    if folder in _HELD:
        _HELD[folder] += 1
        return lock
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder, host = holder_alive(lock.read_text().strip())
            except OSError:
                holder, host = 0, None
            if holder and holder != os.getpid():
                where = f" on {host}" if host and host != socket.gethostname() else ""
                raise OutputError(
                    f"{folder} is in use by process {holder}{where} (lock {lock}); "
                    "wait for it to finish or choose another --out"
                ) from None
            try:  # stale: its process is gone
                lock.unlink()
            except FileNotFoundError:
                pass
            continue
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise OutputError(f"cannot write in {folder} ({err.strerror}); choose another --out") from None
            raise
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(lock_identity()))
        _HELD[folder] = 1
        return lock
    raise OutputError(f"cannot lock {folder}; another run keeps claiming it, choose another --out")


def release_lock(lock: Path) -> None:
    folder = lock.parent
    if _HELD.get(folder, 0) > 1:
        _HELD[folder] -= 1
        return
    _HELD.pop(folder, None)
    try:
        text = lock.read_text().strip()
        mine = text == str(os.getpid())
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            mine = mine or json.loads(text).get("pid") == os.getpid()
        if mine:
            lock.unlink()
    except OSError:
        pass
