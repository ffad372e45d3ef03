"""Attack strength and cost at equal iterations: our APGD vs pyautoattack's APGD-CE vs torchattacks'
APGD (when installed) vs foolbox L2PGD, on the same metric, triplets, epsilons and iteration count.

Robust 2AFC accuracy is printed per side (deterministic for the seed); cost is process CPU time with
one torch thread, the sides interleaved and repeated, as the median ratio to ours with its spread.
Targets: our APGD-CE robust accuracy <= pyautoattack APGD-CE's + 1 triplet, at <= 0.5x its
CPU time.
Run: .venv/bin/python benchmarks/bench_attacks.py [--metric effnet-lite0] [--n 128] [--steps 20] [--repeats 9]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, ratio_line  # noqa: E402

import robustsim  # noqa: E402
from robustsim.attacks import APGD, Attack, make_attack  # noqa: E402
from robustsim.compat import import_optional  # noqa: E402
from robustsim.data import open_triplets  # noqa: E402
from robustsim.errors import MissingPackageError  # noqa: E402


class TorchattacksAPGD(Attack):
    """torchattacks' APGD (cross-entropy, one restart) on the 2-class model, per epsilon."""

    name = "torchattacks-apgd"

    def __init__(self, steps: int) -> None:
        super().__init__("l2", 0)
        self.steps = steps
        self.ta = import_optional("torchattacks")

    def run(self, forward, x, y, eps, generator):
        rows = torch.arange(x.shape[0])

        class Model(torch.nn.Module):
            def forward(self, xa):
                return forward(xa, rows)

        attack = self.ta.APGD(Model(), norm="L2", eps=float(eps.max()), steps=self.steps, n_restarts=1, seed=0)
        x_adv = attack(x, y)
        with torch.no_grad():
            from robustsim.attacks import margin

            return x_adv, margin(forward(x_adv, rows), y) <= 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metric", default="effnet-lite0")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", default="0.25,0.5")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    metric = robustsim.load_metric(args.metric)
    data = open_triplets("mini", limit=args.n)
    eps = [float(e) for e in args.eps.split(",")]
    attacks = {
        "ours APGD-CE": APGD("l2", "ce", steps=args.steps),
        "ours APGD-margin": APGD("l2", "margin", steps=args.steps),
        "pyautoattack APGD-CE": make_attack("aa-apgd-ce", "l2", steps=args.steps),
        "foolbox L2PGD (step 2.5 eps / steps)": make_attack("foolbox-pgd", "l2", steps=args.steps),
    }
    try:
        attacks["torchattacks APGD"] = TorchattacksAPGD(args.steps)
    except MissingPackageError:
        print("torchattacks is not installed: its row is skipped (pip install --no-deps torchattacks)")
    results = {name: a(metric, data, eps, batch_size=args.n, progress=False) for name, a in attacks.items()}
    print(f"load before timing {load()}")
    times = interleaved(
        {name: (lambda a=a: a(metric, data, eps, batch_size=args.n, progress=False)) for name, a in attacks.items()},
        args.repeats,
        warmup=0,
    )
    ours = "ours APGD-CE"
    print(f"\n{args.metric} on mini:test[:{args.n}], l2 eps {eps}, {args.steps} iterations, 1 restart, one thread")
    print(f"| attack | model calls | clean | robust @ {' | robust @ '.join(map(str, eps))} | CPU time vs ours |")
    print("|---|---|---|" + "---|" * len(eps) + "---|")
    for name, res in results.items():
        robust = " | ".join(f"{100 * r:.1f}" for r in res.robust_accuracy())
        ratio = "1.00x" if name == ours else ratio_line(times, name, ours)
        print(f"| {name} | {res.calls} | {100 * res.clean_accuracy:.1f} | {robust} | {ratio} |")
    print(
        f"\nload after {load()}; robust triplets ours {results[ours].robust.sum(1).tolist()} vs pyautoattack "
        f"{results['pyautoattack APGD-CE'].robust.sum(1).tolist()}"
    )


if __name__ == "__main__":
    main()
