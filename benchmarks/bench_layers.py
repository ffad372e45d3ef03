"""1-Lipschitz layer kinds: one training step (forward, backward, Adam) of the ``nano`` LipSimNet student built
from each kind (AOL, CPL, AOC) vs the same student built from SLL layers, same width and input. Interleaved,
one torch thread, process CPU time, median ratio with its spread.

Target: every kind's training step <= 1.5x SLL's.
Run: .venv/bin/python benchmarks/bench_layers.py [--batch 64] [--size 64] [--repeats 9]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, median, ratio_line  # noqa: E402

from robustsim.models import PRESETS, LipSimNet  # noqa: E402
from robustsim.nn import LAYERS  # noqa: E402


def train_step(kind: str, batch: int, size: int):
    torch.manual_seed(0)
    net = LipSimNet(replace(PRESETS["nano"], layer=kind), embed_dim=2560, input_size=size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, size, size) - 0.5

    def step() -> None:
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    kinds = list(LAYERS)
    print(f"load before {load()}; nano student, batch {args.batch}, {args.size} px, one thread, CPU time")
    times = interleaved({k: train_step(k, args.batch, args.size) for k in kinds}, repeats=args.repeats)
    print("| layer kind | s / train step | vs SLL |")
    print("|---|---|---|")
    for k in kinds:
        vs = "1.00x" if k == "sll" else ratio_line(times, k, "sll")
        print(f"| {k} | {median(times[k]):.3f} | {vs} |")
    print(f"load after {load()}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
