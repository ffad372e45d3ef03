"""Certification cost: certifying 2AFC triplets of a shipped metric, as a ratio to one plain forward
pass of the same images (ref, x0, x1) in the same batches: the least a certificate can cost. Three certificates:
the adaptive deployment's (the default: a float32 pass with the rounding hooks, float64 for the triplets whose
radius can cross 36, 72 or 108 /255 or that float32 does not decide; robustsim.certify.adaptive), and the plain
float32 deployment's, in its own dtype only and with the float64 refinement of the triplets that bound leaves
open (lipschitz_batch). One torch thread, process CPU time, interleaved.
Also printed: how many triplets each certifies at every radius, and that no float32 radius exceeds the radius of
the same network deployed in float64 (where the rounding term is ~1e-13).

Target: the default (adaptive) certificate <= 3x one plain forward.
Run: .venv/bin/python benchmarks/bench_certify.py [--metric lipsim-nano-aoc] [--n 600] [--repeats 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, ratio_line, triplet_args, triplet_batches  # noqa: E402

from robustsim.certify import float64_copy, input_lipschitz  # noqa: E402
from robustsim.certify.adaptive import adaptive_batch  # noqa: E402
from robustsim.certify.radius import lipschitz_batch  # noqa: E402
from robustsim.data import open_triplets  # noqa: E402
from robustsim.zoo import load_metric  # noqa: E402

EPS = [36 / 255, 72 / 255, 108 / 255]


def main() -> None:
    args = triplet_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    metric = load_metric(args.metric, dtype="adaptive")
    data = open_triplets("mini:test", limit=args.n)
    batches = triplet_batches(data, args.batch)
    L = input_lipschitz(metric, tuple(batches[0][0].shape[-2:]))[0]
    twin = float64_copy(metric)

    @torch.no_grad()
    def plain() -> None:
        for ref, x0, x1 in batches:
            metric._embed(torch.cat([ref, x0, x1]))

    def certify(exact) -> torch.Tensor:
        radii = [
            lipschitz_batch(metric, ref, x0, x1, "ref", "sound", L, exact=exact)[0]
            for ref, x0, x1 in batches
        ]
        return torch.cat(radii)

    print(f"load before {load()}; {args.metric}, {len(data)} mini:test triplets, batches of {args.batch}, one thread")
    dim = batches[0][0][0].numel()
    thresholds = list(EPS)  # l2 radii of the reference, as certify_2afc passes them

    def adaptive() -> torch.Tensor:
        return torch.cat([adaptive_batch(metric, ref, x0, x1, "ref", L, thresholds)[0] for ref, x0, x1 in batches])

    times = interleaved(
        {"adaptive": adaptive, "dtype only": lambda: certify(None), "refined": lambda: certify(lambda: twin),
         "plain": plain},
        args.repeats,
    )  # fmt: skip
    print(f"certify the adaptive deployment (the default) / plain:  {ratio_line(times, 'adaptive', 'plain')}")
    print(f"certify float32 decisions, float32 only / plain:       {ratio_line(times, 'dtype only', 'plain')}")
    print(f"certify float32 decisions, float64 refinement / plain: {ratio_line(times, 'refined', 'plain')}")
    r32, r_ref, r_ad = certify(None), certify(lambda: twin), adaptive()
    print(f"(images of {dim} values; the adaptive certificate refines only the triplets whose radius can cross "
          f"{', '.join(f'{round(e * 255)}/255' for e in EPS)})")
    r64 = torch.cat(
        [lipschitz_batch(twin, *(t.double() for t in b), "ref", "sound", L)[0] for b in batches]
    )
    for name, r in (("dtype only", r32), ("refined", r_ref), ("adaptive", r_ad), ("float64 deployment", r64)):
        print(
            f"{name:>20}: triplets with radius > "
            + ", ".join(f"{round(e * 255)}/255: {int((r > e).sum())}" for e in EPS)
        )
    print(f"largest excess of a float32 radius over the float64 deployment's: {float((r_ref - r64).max()):.3g}")
    print(f"largest excess of an adaptive radius over the float64 deployment's: {float((r_ad - r64).max()):.3g}")
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
