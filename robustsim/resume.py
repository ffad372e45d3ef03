"""Finished batches of a long run kept on disk, so the same command continues after Ctrl-C or a kill (the
audit's counterpart of the bench's cells). A batch's saved record (its per-item results and whatever the run
collected beside them) is keyed by everything that decides it: the work's settings, the metric's weights, the
data and the batch's items; a changed setting never reuses a record.

A record is trusted only when it proves itself: it holds its own key (a record copied under another record's
name is not that record), an HMAC of its bytes under a secret kept in robustsim's cache folder (an edited or forged
record fails, however consistent its numbers), and the caller's ``check`` of its shapes and laws; a record that
fails is recomputed with one warning line. Records are written atomically inside the run folder and never through
a link planted there (:func:`robustsim.io.inside`); the caller deletes the folder once its report is written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import io
import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from robustsim.errors import UntrustedState
from robustsim.io import atomic_write, inside, read_inside
from robustsim.text import visible

Check = Callable[[dict], str | None]  # why a record cannot be used (None: it can)


KEY_NAME = "state.key"


def _secret() -> bytes:
    """This user's key for records: ``state.key`` in robustsim's cache folder, 32 random bytes only its owner can
    read or write, in a folder no one else can write (created private whatever the umask). A key that is not that
    (planted by another user or readable by others, a link, a FIFO, a folder, the wrong size) is never used: one
    warning line and a fresh key (earlier records are then recomputed). Where the cache folder cannot hold a key, or
    is writable by others, a process-local one (records of earlier processes are then recomputed)."""
    from robustsim.cache import cache_root

    folder = cache_root()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=False)
        os.chmod(folder, 0o700)  # mkdir's mode passes through the umask
    except FileExistsError:
        pass
    except OSError:
        return _PROCESS_KEY
    try:
        info = os.stat(folder)
    except OSError:
        return _PROCESS_KEY
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        _warn_once(f"warning: {folder} is writable by other users, so its resume key could be swapped; resuming "
                   "within this process only (chmod go-w it, or set ROBUSTSIM_CACHE to a private folder)")
        return _PROCESS_KEY
    path = folder / KEY_NAME
    key, problem = _read_key(path)
    if key is not None:
        return key
    if problem is not None:
        _warn_once(f"warning: the resume key {path} {problem}; made a fresh one (kept batches are recomputed)")
    return _fresh_key(path) or _PROCESS_KEY


def _read_key(path: Path) -> tuple[bytes | None, str | None]:
    """(the key, None), (None, None) when there is none, or (None, why it cannot be trusted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, "is a symbolic link" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "is not a regular file"
        if info.st_uid != os.getuid():
            return None, "belongs to another user"
        if info.st_mode & 0o077:
            return None, "can be read or written by other users"
        key = os.read(fd, 65)
    finally:
        os.close(fd)
    return (key, None) if 32 <= len(key) <= 64 else (None, f"holds {len(key)} bytes, not a key")


def _fresh_key(path: Path) -> bytes | None:
    """Write 32 random bytes as ``path`` (mode 600, atomically: a planted file, link or FIFO is replaced, a folder
    is not); None when it cannot."""
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, key)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    got, _ = _read_key(path)  # another process may have won the race: use what is there
    return got if got is not None else key


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr)


_PROCESS_KEY = secrets.token_bytes(32)


class BatchStore:
    """``folder/<key>.pt`` records of one run inside the run folder ``root``; ``restored`` counts the batches taken
    from disk."""

    def __init__(self, folder: Path, context: dict, root: Path | None = None) -> None:
        self.folder = Path(folder)
        self.root = Path(root) if root is not None else self.folder.parent
        self.context = json.dumps(context, sort_keys=True, default=str)
        self.restored = 0
        self.total = 0
        self._key = _secret()
        inside(self.root, self.folder, folder=True)  # a state folder replaced by a file or a link: one line, now

    def _name(self, part: str, items: torch.Tensor) -> str:
        h = hashlib.sha256(self.context.encode())
        h.update(part.encode())
        h.update(items.to(torch.int64).cpu().numpy().tobytes())
        return h.hexdigest()[:32]

    def _mac(self, name: str, payload: bytes) -> str:
        return hmac.new(self._key, name.encode() + payload, hashlib.sha256).hexdigest()

    def load(self, part: str, items: torch.Tensor, check: Check | None = None) -> dict | None:
        """The record of this batch when it proves itself (module docstring), else None (a warning line for one
        that is there but fails)."""
        self.total += 1
        name = self._name(part, items)
        path = self.folder / f"{name}.pt"
        try:
            raw = read_inside(self.root, path)
        except UntrustedState as err:
            print(visible(f"warning: {err}; recomputing its batch"), file=sys.stderr)
            return None
        if raw is None:
            return None
        problem = None
        try:
            box = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            payload = box["payload"] if isinstance(box, dict) else None
            if not isinstance(payload, bytes) or box.get("key") != name:
                problem = "is not this batch's record (another run's, or renamed)"
            elif not hmac.compare_digest(str(box.get("mac")), self._mac(name, payload)):
                problem = "does not carry its own signature (edited or forged)"
            else:
                record = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
                problem = "is not a record" if not isinstance(record, dict) else (check(record) if check else None)
        except Exception as err:  # noqa: BLE001 - whatever a damaged file raises, it is recomputed
            problem = f"cannot be read ({type(err).__name__})"
        if problem is not None:
            print(visible(f"warning: {path} {problem}; recomputing its batch"), file=sys.stderr)
            return None
        self.restored += 1
        return record

    def save(self, part: str, items: torch.Tensor, record: dict) -> None:
        name = self._name(part, items)
        payload = io.BytesIO()
        torch.save(record, payload)  # into memory: a full disk fails in the write below, in one line
        box = io.BytesIO()
        torch.save({"key": name, "mac": self._mac(name, payload.getvalue()), "payload": payload.getvalue()}, box)
        atomic_write(self.folder / f"{name}.pt", lambda tmp: tmp.write_bytes(box.getvalue()), within=self.root)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
