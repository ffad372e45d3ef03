"""The one loop over a dataset that scoring, attacks, certificates and retrieval share.

:func:`run_batches` owns what every evaluation repeats: this rank's share of the items under torchrun, a
streaming loader, images moved to the device and validated against the Metric protocol, a progress bar, and
the per-item results concatenated and gathered on rank 0 in the original order. The caller supplies one
function, ``step(batch, tick) -> {name: tensor}``, that computes a batch's per-item results (``tick(n)``
advances the bar by n units of work, e.g. model calls).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from robustsim.data.triplets import Batch, iter_batches, triplet_loader
from robustsim.dist import DistEnv, gather_rows, init_distributed, shard
from robustsim.metrics.base import Metric, validate_images

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
    batches = loader(share, batch_size=batch_size, workers=workers)
    per_batch = work if callable(work) else (lambda _n, w=int(work): w)
    total = sum(per_batch(min(batch_size, len(share) - s)) for s in range(0, len(share), batch_size))
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not (progress and env.main), leave=False)
    parts: dict[str, list[torch.Tensor]] = {}
    validate = metric is not None and metric.validate
    try:
        for batch in iter_batches(batches):
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

            for key, value in step(batch, tick).items():
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
