"""Clean 2AFC decisions of a shipped certified metric on mini:test in three deployments, side by side: plain
float32, adaptive (float32 with a sound rounding bound, the float64 twin where float32 cannot resolve the exact
decision: robustsim.certify.adaptive) and float64. Also printed: how often the adaptive deployment falls back,
clean and at the points the quick protocol's attacks reach (an
attacker aiming at the boundary forces fallbacks: time, never correctness), and whether its decisions equal
float64's. One torch thread, process CPU time, interleaved.

Target: adaptive <= 2x float32 clean.
Run: .venv/bin/python benchmarks/bench_decide.py [--metric lipsim-nano-aoc] [--n 600] [--repeats 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, median, ratio_line, triplet_args, triplet_batches  # noqa: E402

from robustsim.attacks import make_attack  # noqa: E402
from robustsim.bench.protocol import PROTOCOLS  # noqa: E402
from robustsim.certify.adaptive import tally  # noqa: E402
from robustsim.certify.rounding import twin  # noqa: E402
from robustsim.data import open_triplets  # noqa: E402
from robustsim.score2afc import triplet_distances  # noqa: E402
from robustsim.scoring import two_afc_choice  # noqa: E402
from robustsim.zoo import load_metric  # noqa: E402


def main() -> None:
    args = triplet_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    adaptive = load_metric(args.metric, dtype="adaptive")
    plain = load_metric(args.metric, dtype="float32")
    double = twin(adaptive)
    data = open_triplets("mini:test", limit=args.n)
    batches = triplet_batches(data, args.batch)

    @torch.no_grad()
    def decide(metric, cast=lambda t: t) -> torch.Tensor:
        return torch.cat([two_afc_choice(*triplet_distances(metric, *(cast(t) for t in b))) for b in batches])

    print(f"load before {load()}; {args.metric}, {len(data)} mini:test triplets, batches of {args.batch}, one thread")
    times = interleaved(
        {"float32": lambda: decide(plain), "adaptive": lambda: decide(adaptive),
         "float64": lambda: decide(double, torch.Tensor.double)},
        args.repeats,
    )  # fmt: skip
    per = {k: 1000 * median(v) / (3 * len(data)) for k, v in times.items()}
    print("ms per image (median): " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))
    print(f"adaptive / float32:  {ratio_line(times, 'adaptive', 'float32')}")
    print(f"float64 / float32:   {ratio_line(times, 'float64', 'float32')}")
    c32, ca, c64 = decide(plain), decide(adaptive), decide(double, torch.Tensor.double)
    print(f"decisions equal to float64's: adaptive {int((ca == c64).sum())}/{len(c64)}, "
          f"float32 {int((c32 == c64).sum())}/{len(c64)}")  # fmt: skip
    print(f"fallback rate clean: {100 * tally(adaptive).rate('clean'):.1f} %")
    quick = PROTOCOLS["quick"]
    attacked = open_triplets("mini:test", limit=quick.limit)
    for name in quick.attacks:
        for threat in quick.threat_models:
            make_attack(name, threat, steps=quick.steps)(adaptive, attacked, threat, progress=False)
    print(f"fallback rate at the points the quick protocol's attacks reach ({', '.join(quick.attacks)}, "
          f"{quick.steps} steps, {quick.limit} triplets, l2 and linf): {100 * tally(adaptive).rate('attack'):.1f} %")
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
