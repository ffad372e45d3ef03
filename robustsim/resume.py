"""Finished batches of a long run kept on disk, so the same command continues after Ctrl-C or a kill (the
audit's counterpart of the bench's cells). A batch's saved record (its per-item results and whatever the run
collected beside them) is keyed by everything that decides it: the work's settings, the metric's weights, the
data and the batch's items; a changed setting never reuses a record. Records are written atomically, so a
kill mid-write leaves the previous state; the caller deletes the folder once its report is written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from robustsim.io import atomic_write


class BatchStore:
    """``folder/<key>.pt`` records of one run; ``restored`` counts the batches taken from disk."""

    def __init__(self, folder: Path, context: dict) -> None:
        self.folder = Path(folder)
        self.context = json.dumps(context, sort_keys=True, default=str)
        self.restored = 0
        self.total = 0

    def _path(self, part: str, items: torch.Tensor) -> Path:
        h = hashlib.sha256(self.context.encode())
        h.update(part.encode())
        h.update(items.to(torch.int64).cpu().numpy().tobytes())
        return self.folder / f"{h.hexdigest()[:32]}.pt"

    def load(self, part: str, items: torch.Tensor) -> dict | None:
        self.total += 1
        path = self._path(part, items)
        if not path.is_file():
            return None
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged record is recomputed
            return None
        self.restored += 1
        return record

    def save(self, part: str, items: torch.Tensor, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(part, items), lambda tmp: torch.save(record, tmp))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
