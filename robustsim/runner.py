"""The one loop over a dataset that scoring, attacks, certificates and retrieval share.

:func:`run_batches` owns what every evaluation repeats: this rank's share of the items under torchrun, a
streaming loader, images moved to the device and validated against the Metric protocol, a progress bar, and
the per-item results concatenated and gathered on rank 0 in the original order. The caller supplies one
function, ``step(batch, tick) -> {name: tensor}``, that computes a batch's per-item results (``tick(n)``
advances the bar by n units of work, e.g. model calls).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from robustsim.data.triplets import Batch, iter_batches, triplet_loader
from robustsim.dist import DistEnv, gather_rows, init_distributed, shard
from robustsim.errors import RobustsimError
from robustsim.limits import MAX_BATCH, AutoBatch
from robustsim.metrics.base import Metric, validate_images
from robustsim.text import visible

Rows = dict[str, torch.Tensor]
Step = Callable[[Batch, Callable[[int], None]], Rows]
IMAGES = ("ref", "x0", "x1")


def run_batches(
    data,
    step: Step,
    *,
    desc: str,
    batch_size: int,
    device: torch.device | str = "cpu",
    metric: Metric | None = None,
    workers: int | None = None,
    progress: bool = True,
    env: DistEnv | None = None,
    work: int | Callable[[int], int] = 1,
    unit: str = "batch",
    dims: Mapping[str, int] | None = None,
    images: Sequence[str] = IMAGES,
    loader: Callable = triplet_loader,
) -> Rows | None:
    """Run ``step`` on every batch of ``data`` (a dataset with ``select``) and return its per-item results.

    ``images`` name the batch's image tensors, moved to ``device`` and validated when ``metric.validate``;
    other entries (labels, indices) stay on the CPU. ``work`` is the bar's units per batch (a number, or a
    function of the batch size); units a step does not tick (early-stopped work) count as done at its end.
    ``dims`` gives the item dimension of results not indexed along dim 0. Under torchrun (``env`` with
    several ranks, default: joined from the environment) each rank runs every ``world``-th item and rank 0
    returns the whole result; the other ranks get None."""
    device = torch.device(device)
    env = env or init_distributed(device)
    n_all = len(data)
    share, mine = shard(data, env)
    dims = dict(dims or {})
    per_batch = work if callable(work) else (lambda _n, w=int(work): w)
    total = sum(per_batch(min(batch_size, len(share) - s)) for s in range(0, len(share), batch_size))
    bar = tqdm(total=total, desc=visible(desc), unit=unit, disable=not (progress and env.main), leave=False)
    parts: dict[str, list[torch.Tensor]] = {}
    fit = [batch_size]  # the largest piece of a batch that fits in the device's memory (halved on running out)
    validate = metric is not None and metric.validate
    grow = isinstance(batch_size, AutoBatch) and len(share) > batch_size and hasattr(share, "select")
    probe = MemoryProbe.of(device) if grow else None

    def regrown(size: int) -> None:  # the bar's total for the rest in batches of ``size``
        rest = len(share) - batch_size
        bar.total = per_batch(batch_size) + sum(per_batch(min(size, rest - s)) for s in range(0, rest, size))

    try:
        for batch in _batches(share, loader, batch_size, workers, probe, fit, desc, regrown):
            for k in images:
                if k in batch:
                    batch[k] = batch[k].to(device)
                    if validate:
                        validate_images(batch[k], k)
            n = int(batch[next(k for k in images if k in batch)].shape[0])
            budget, used = per_batch(n), [0]

            def tick(units: int = 1, budget=budget, used=used) -> None:
                take = max(0, min(units, budget - used[0]))
                used[0] += take
                bar.update(take)

            for key, value in _fitted(step, batch, tick, n, fit, dims, desc).items():
                parts.setdefault(key, []).append(value.detach().cpu())
            bar.update(budget - used[0])
    finally:
        bar.close()
    rows = {k: torch.cat(v, dim=dims.get(k, 0)) for k, v in parts.items()}
    if env.world > 1:
        gathered = {k: gather_rows(v, mine, n_all, env, dim=dims.get(k, 0)) for k, v in sorted(rows.items())}
        if not env.main:
            return None
        rows = {k: v for k, v in gathered.items() if v is not None}
    return rows


FITTED: dict[str, int] = {}  # the batch size each run (by its description) came to: grown to fit, or halved on OOM
HEADROOM = 0.8  # an AutoBatch grows to fill this share of a GPU's free memory


class MemoryProbe:
    """A CUDA device's memory around the first batch: the peak it added per item, and what is free now (the
    driver's free memory plus what torch's cache holds unused)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @classmethod
    def of(cls, device: torch.device) -> MemoryProbe | None:
        return cls(device) if device.type == "cuda" else None

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def peak_added(self) -> int:
        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)

    def available(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device))


def grown_size(batch_size: int, peak: int, available: int, headroom: float) -> int:
    """The batch size (a multiple of ``batch_size``, at most MAX_BATCH) whose peak, at ``peak / batch_size`` bytes
    per item as the probe batch of ``batch_size`` measured, fills ``headroom`` of the ``available`` bytes; never
    below ``batch_size``."""
    per_item = max(1.0, peak / batch_size)
    fits = int(headroom * available / per_item)
    return max(batch_size, min(MAX_BATCH, fits // batch_size * batch_size))


def _batches(
    share, loader: Callable, batch_size: int, workers, probe: MemoryProbe | None, fit: list[int], desc: str, grown
):
    """The loader's batches; with a ``probe``, the first batch of ``batch_size`` measures the memory an item
    takes, and the rest come in batches grown to fill the free memory (said once on stderr, recorded as
    FITTED; ``grown(size)`` is told)."""
    if probe is None:
        yield from iter_batches(loader(share, batch_size=batch_size, workers=workers))
        return
    probe.start()
    first = next(iter_batches(loader(share.select(list(range(batch_size))), batch_size=batch_size, workers=workers)))
    yield first  # the caller runs it before asking for more
    size = grown_size(batch_size, probe.peak_added(), probe.available(), HEADROOM)
    if size > batch_size and fit[0] == batch_size:
        fit[0] = size
        FITTED[desc] = size
        grown(size)
        print(f"{desc}: {size} per batch fill the free device memory (measured on {batch_size})", file=sys.stderr)
    else:
        size = batch_size
    rest = share.select(list(range(batch_size, len(share))))
    yield from iter_batches(loader(rest, batch_size=size, workers=workers))


def _piece(batch: Batch, start: int, stop: int, n: int) -> Batch:
    return {k: v[start:stop] if hasattr(v, "__len__") and len(v) == n else v for k, v in batch.items()}


def _fitted(step: Step, batch: Batch, tick, n: int, fit: list[int], dims: Mapping[str, int], desc: str) -> Rows:
    """``step`` on ``batch`` in pieces of at most ``fit[0]`` items: when the device runs out of memory, the piece
    halves (down to one item; kept for the next batches, said once on stderr and recorded in the report's
    runtime) and that piece runs again, in halves; the pieces done before it are kept. Per-item results do not
    depend on the batching, so the rows are the same."""
    outs: list[Rows] = []
    start = 0
    while start < n:
        size = min(fit[0], n - start)
        try:
            outs.append(step(_piece(batch, start, start + size, n), tick))
            start += size
        except torch.OutOfMemoryError:
            if size == 1:
                raise RobustsimError(
                    f"{desc}: one item does not fit in the device's memory; free it, or use a smaller model or "
                    "images (--device cpu runs anything)"
                ) from None
            fit[0] = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if FITTED.get(desc) is None:
                print(f"{desc}: out of device memory at {size} per batch; continuing with {fit[0]}", file=sys.stderr)
            FITTED[desc] = fit[0]
    if len(outs) == 1:
        return outs[0]
    return {k: torch.cat([o[k] for o in outs], dim=dims.get(k, 0)) for k in outs[0]}
