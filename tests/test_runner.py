"""The one batch runner (robustsim/runner.py): a batch that does not fit in the device's memory is halved, the
rows are those of a run that fits, and the report's runtime says so."""

from __future__ import annotations

import pytest
import torch

from robustsim.data import open_triplets
from robustsim.errors import RobustsimError
from robustsim.limits import AutoBatch
from robustsim.runner import FITTED, run_batches
from robustsim.threads import runtime_info


def _step(limit: int | None):
    seen: list[int] = []

    def step(batch, tick):
        n = batch["ref"].shape[0]
        seen.append(n)
        if limit is not None and n > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        # a row's largest value: exact in any order, so any batch size gives the same bits (the runner's law is
        # that the rows come back as a run that fits gives them, not an arithmetic one)
        return {"peak": batch["ref"].flatten(1).amax(1), "index": batch["index"]}

    return step, seen


@pytest.mark.portable
def test_a_batch_that_runs_out_of_memory_is_halved_and_gives_the_same_rows(capsys):
    data = open_triplets("mini:test", limit=20)
    plain, _ = _step(None)
    want = run_batches(data, plain, desc="plain", batch_size=8, progress=False)
    tight, seen = _step(3)
    got = run_batches(data, tight, desc="tight run", batch_size=8, progress=False)
    assert want is not None and got is not None
    assert torch.equal(got["peak"], want["peak"]) and torch.equal(got["index"], want["index"])
    assert FITTED["tight run"] == 2 and seen[:3] == [8, 4, 2]  # 8 and 4 ran out; 2 fits, and stays
    assert max(seen[3:]) <= 2
    assert "out of device memory at 8 per batch; continuing with 4" in capsys.readouterr().err
    assert runtime_info()["batch_size_fitted"]["tight run"] == 2


def test_the_pieces_done_before_running_out_of_memory_are_not_run_again():
    """A batch of 8 whose items 4-7 need more memory than 2 at a time: the first half is done once, and only the
    piece that ran out is halved (every item's work counted once)."""
    data = open_triplets("mini:test", limit=8)
    done: list[int] = []

    def step(batch, tick):
        ids = batch["index"].tolist()
        if len(ids) > 2 and max(ids) >= 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        done.extend(ids)
        return {"index": batch["index"]}

    got = run_batches(data, step, desc="second half", batch_size=8, progress=False)
    assert got is not None and got["index"].tolist() == list(range(8))
    assert done == list(range(8))  # each item once: 0-3 in the piece of 4, then 4-5 and 6-7


def test_an_item_that_never_fits_is_one_line():
    never, _ = _step(0)
    with pytest.raises(RobustsimError, match="one item does not fit in the device's memory"):
        run_batches(open_triplets("mini:test", limit=4), never, desc="huge", batch_size=4, progress=False)


class _Device:
    """A GPU's memory as MemoryProbe reads it: each item of a batch adds ``item`` bytes at its peak."""

    def __init__(self, item: int, free: int) -> None:
        self.item, self.free, self.n = item, free, 0

    def start(self) -> None:
        self.n = 0

    def peak_added(self) -> int:
        return self.item * self.n

    def available(self) -> int:
        return self.free


@pytest.mark.portable
def test_auto_batches_grow_to_the_free_memory_the_first_batch_measures(monkeypatch, capsys):
    """On a GPU the first batch measures the peak memory an item adds; the
    rest come in batches that fill the free memory (a multiple of the first), with the same rows."""
    from robustsim import runner

    data = open_triplets("mini:test", limit=50)
    plain, _ = _step(None)
    want = run_batches(data, plain, desc="fixed", batch_size=4, progress=False)
    device = _Device(item=1000, free=20_000)  # 0.8 * 20000 / 1000 = 16 items fit
    monkeypatch.setattr(runner.MemoryProbe, "of", classmethod(lambda cls, dev: device))
    step, seen = _step(None)

    def measured(batch, tick):
        device.n = max(device.n, batch["ref"].shape[0])
        return step(batch, tick)

    assert run_batches(data, measured, desc="kept", batch_size=4, progress=False) is not None  # a plain int stays
    assert seen == [4] * 12 + [2] and "kept" not in FITTED
    seen.clear()
    got = run_batches(data, measured, desc="grown run", batch_size=AutoBatch(4), progress=False)
    assert want is not None and got is not None
    assert torch.equal(got["peak"], want["peak"]) and torch.equal(got["index"], want["index"])
    assert seen == [4, 16, 16, 14] and FITTED["grown run"] == 16
    assert "16 per batch fill the free device memory (measured on 4)" in capsys.readouterr().err
    assert runtime_info()["batch_size_fitted"]["grown run"] == 16


def test_the_grown_batch_is_a_multiple_of_the_first_and_never_smaller():
    from robustsim.limits import MAX_BATCH
    from robustsim.runner import grown_size

    assert grown_size(32, peak=32 * 10**6, available=10**9, headroom=0.8) == 800
    assert grown_size(32, peak=32 * 10**6, available=10**7, headroom=0.8) == 32  # less free than measured
    assert grown_size(32, peak=0, available=10**12, headroom=0.8) == MAX_BATCH
    assert grown_size(24, peak=24 * 1000, available=100_000, headroom=1.0) == 96


def test_batch_size_auto_on_the_command_line_is_an_auto_batch_of_32(capsys):
    """The default and ``auto`` give the commands an AutoBatch (it reaches run_batches through every layer, and
    through ctx.invoke, as the demo runs the commands); a number is kept exactly."""
    import click

    from robustsim.cli.options import batch_option
    from robustsim.cli.score import score_cmd

    got = {}

    @click.command()
    @batch_option
    def probe(batch_size):
        got["value"] = batch_size

    for argv, want, auto in (([], 32, True), (["--batch-size", "auto"], 32, True), (["--batch-size", "8"], 8, False)):
        probe.main(argv, standalone_mode=False)
        assert got["value"] == want and isinstance(got["value"], AutoBatch) is auto
    with click.Context(score_cmd) as ctx:  # what ctx.invoke fills in for a left-out option
        param = next(p for p in score_cmd.params if p.name == "batch_size")
        assert isinstance(param.type_cast_value(ctx, param.get_default(ctx)), AutoBatch)
    from conftest import run_cli

    assert run_cli(["score", "--metric", "l2", "--batch-size", "lots"]) == 2
    assert "'lots' is not a batch size: write a number from 1 to 65536, or auto" in capsys.readouterr().err
    assert run_cli(["score", "--metric", "l2", "--batch-size", "0"]) == 2
