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
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise OutputError(f"cannot use {what} {path}: {err.strerror}; choose another path") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise OutputError(f"{what} {path} is {kind}; robustsim only replaces regular files, choose another path")
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


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside the output's target; on success it is renamed onto the target
    (see the module's rule); on failure it is removed and the old file is untouched."""
    target = check_output(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file normal permissions
    try:
        yield Path(tmp)
        check_output(path)  # the node may have changed while the work ran
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN / inf float replaced by None (strict JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as strict, indented JSON (non-finite numbers become null)."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


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
