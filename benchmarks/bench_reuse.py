"""Repeated work across cells: the quick bench with the clean images embedded once per metric
and shared by every attack and threat model (robustsim's default), against embedding them again for each (the
behaviour before), side by side in one process, one thread, interleaved: CPU time of the robust cells of each
side and whether the two leaderboards are the same numbers.

Run: .venv/bin/python benchmarks/bench_reuse.py [--metrics lipsim-nano,effnet-lite0] [--limit 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def numbers(cards: dict) -> dict:
    return {m: (c["clean"], c["robust"], c["certified"]) for m, c in cards.items() if not m.startswith("_")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="lipsim-nano,effnet-lite0")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from robustsim.bench import run

    names = args.metrics.split(",")
    times: dict[bool, list[float]] = {True: [], False: []}
    seen: dict[bool, dict] = {}
    for _ in range(args.repeats):
        for reuse in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.process_time()
                cards = run(
                    names, "mini", Path(tmp), limit=args.limit, progress=False, log=lambda *a: None, reuse=reuse
                )
                times[reuse].append(time.process_time() - t0)
                assert cards is not None
                seen[reuse] = numbers(cards)
    before, after = min(times[False]), min(times[True])
    print(f"quick bench of {', '.join(names)} on {args.limit} mini triplets, one thread, CPU time:")
    print(f"  clean images embedded per attack (before): {before:.1f} s")
    print(f"  embedded once per metric (robustsim):      {after:.1f} s  ({before / after:.2f}x less)")
    print(f"  same leaderboard numbers: {seen[True] == seen[False]}")


if __name__ == "__main__":
    main()
