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

import hashlib
import hmac
import io
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from robustsim.io import atomic_write, inside, read_inside

Check = Callable[[dict], str | None]  # why a record cannot be used (None: it can)


def _secret() -> bytes:
    """This user's key for records (created once, readable by its owner only); a process-local one where the cache
    folder cannot hold it (records of earlier processes are then recomputed)."""
    from robustsim.cache import cache_root

    path = cache_root() / "state.key"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    except FileExistsError:
        pass
    except OSError:
        return _PROCESS_KEY
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            key = fh.read(64)
    except OSError:
        return _PROCESS_KEY
    return key if len(key) >= 32 else _PROCESS_KEY


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
        raw = read_inside(self.root, path)
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
            print(f"warning: {path} {problem}; recomputing its batch", file=sys.stderr)
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
