"""The one batch runner (robustsim/runner.py): a batch that does not fit in the device's memory is halved, the
rows are those of a run that fits, and the report's runtime says so."""

from __future__ import annotations

import pytest
import torch

from robustsim.data import open_triplets
from robustsim.errors import RobustsimError
from robustsim.runner import FITTED, run_batches
from robustsim.threads import runtime_info


def _step(limit: int | None):
    seen: list[int] = []

    def step(batch, tick):
        n = batch["ref"].shape[0]
        seen.append(n)
        if limit is not None and n > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"mean": batch["ref"].flatten(1).mean(1), "index": batch["index"]}

    return step, seen


def test_a_batch_that_runs_out_of_memory_is_halved_and_gives_the_same_rows(capsys):
    data = open_triplets("mini:test", limit=20)
    plain, _ = _step(None)
    want = run_batches(data, plain, desc="plain", batch_size=8, progress=False)
    tight, seen = _step(3)
    got = run_batches(data, tight, desc="tight run", batch_size=8, progress=False)
    assert want is not None and got is not None
    assert torch.equal(got["mean"], want["mean"]) and torch.equal(got["index"], want["index"])
    assert FITTED["tight run"] == 2 and seen[:3] == [8, 4, 2]  # 8 and 4 ran out; 2 fits, and stays
    assert max(seen[3:]) <= 2
    assert "out of device memory at 8 per batch; continuing with 4" in capsys.readouterr().err
    assert runtime_info()["batch_size_fitted"]["tight run"] == 2


def test_an_item_that_never_fits_is_one_line():
    never, _ = _step(0)
    with pytest.raises(RobustsimError, match="one item does not fit in the device's memory"):
        run_batches(open_triplets("mini:test", limit=4), never, desc="huge", batch_size=4, progress=False)
