"""The runs whose numbers the docs quote: each documented command is run here and its output kept in
``docs/runs/<name>.json`` (the command, its stdout, the report files it wrote, when, how long, on what machine);
``experiments/docs_blocks.py`` renders the docs' generated blocks from these files and the shipped cards, and
``tests/test_docs_numbers.py`` checks that every page shows what they hold (and re-runs the cheap ones).

Run: .venv/bin/python experiments/docs_runs.py [NAME ...]   (no name: every run; about 40 minutes on 2 cores)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = ROOT / "docs" / "runs"
OFFLINE_METRICS = "l2,ssim,ms-ssim,effnet-lite0,effnet-ensemble,dinov2-s14,lipsim-nano,lipsim-nano-cert,lipsim-nano-aoc"


@dataclass(frozen=True)
class Run:
    """``robustsim *argv`` in a fresh folder; ``keep``: report files (relative to that folder) kept with stdout."""

    argv: tuple[str, ...]
    keep: tuple[str, ...] = ()
    cheap: bool = False  # tests/test_docs_numbers.py re-runs it and compares every number
    python: str = ""  # instead of a command: this Python code (its stdout is kept)


def cli(command: str, *keep: str, cheap: bool = False) -> Run:
    """A documented ``robustsim`` command (without the program name), the report files it writes to keep."""
    return Run(tuple(shlex.split(command)), keep, cheap)


SIZES = """
import json, robustsim
from robustsim.certify import certify_2afc
from robustsim.data import open_triplets
metric, out = robustsim.load_metric("lipsim-nano-cert"), []
for size in (32, 64, 128):
    data = open_triplets("mini:test", size=size)
    res = certify_2afc(metric, data, [36 / 255, 72 / 255, 108 / 255], progress=False)
    cert = [c["certified"] for c in res.curve()]
    out.append({"size": size, "L": res.lipschitz, "clean": res.clean_score, "certified": cert})
print(json.dumps(out))
"""
SMOOTHED_SSIM = "audit --metric ssim --data mini:test --limit 100 --smoothing 0.1 --steps 10 --attacks apgd-ce"

RUNS: dict[str, Run] = {
    "certify-sizes": Run((), python=SIZES),
    "demo-score": cli("score --metric l2,ssim,ms-ssim,effnet-lite0,effnet-ensemble,lipsim-nano --data mini"),
    "demo-certify": cli("certify --metric lipsim-nano-aoc --data mini", cheap=True),
    "demo-certify-float64": cli("certify --metric lipsim-nano-aoc --data mini --dtype float64", cheap=True),
    "bench-quick": cli(f"bench --metrics {OFFLINE_METRICS} --data mini --protocol quick --out b", "b/leaderboard.md"),
    "audit-ssim-smoothed-eot1": cli(f"{SMOOTHED_SSIM} --eot 1 --eps 0.25,0.5 --out a", "a/report.json"),
    "audit-ssim-smoothed-eot8": cli(f"{SMOOTHED_SSIM} --eot 8 --eps 0.25,0.5 --out a", "a/report.json"),
    "audit-l2-l2": cli("audit --metric l2 --data mini --norm l2 --eps 0.5,1,2 --steps 50", cheap=True),
    "audit-l2-linf": cli("audit --metric l2 --data mini --norm linf --eps 1/255,2/255,4/255 --steps 50"),
    "audit-effnet-l2": cli(
        "audit --metric effnet-ensemble --data mini --limit 100 --norm l2 --eps 0.5,1,2 --steps 10 --out a",
        "a/report.json",
    ),
    "audit-effnet-linf": cli(
        "audit --metric effnet-ensemble --data mini --limit 100 --norm linf --eps 1/255,2/255,4/255 --steps 10"
    ),
    **{
        f"certify-target-{t}": cli(
            f"certify --metric lipsim-nano-cert --data mini --target {t} --json r.json", "r.json"
        )
        for t in ("ref", "x0", "x1", "all")
    },
    "certify-center-ssim": cli(
        "certify --method center-smoothing --metric ssim --data mini:test --limit 20 --sigma 0.1 --eps 0.02,0.05,0.1"
    ),
    **{
        f"retrieval-{m}": cli(f"retrieval --metric {m} --data mini --k 1,5,10 --eps 0.5,1 --out r", "r/report.json")
        for m in ("l2", "effnet-ensemble", "lipsim-nano")
    },
}


def run(name: str) -> dict:
    spec = RUNS[name]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", spec.python] if spec.python else [sys.executable, "-m", "robustsim", *spec.argv]
        done = subprocess.run(
            cmd,
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "ROBUSTSIM_OFFLINE": "1"},
        )
        seconds = time.perf_counter() - t0
        files = {f: (Path(tmp) / f).read_text() for f in spec.keep}
    return {
        "command": "python -c <SIZES>" if spec.python else "robustsim " + shlex.join(spec.argv),
        "stdout": done.stdout,
        "files": files,
        "seconds": round(seconds, 1),
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, torch threads chosen by robustsim",
    }


def main(names: list[str]) -> None:
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or list(RUNS):
        if name not in RUNS:
            sys.exit(f"unknown run {name!r}; choose from {', '.join(RUNS)}")
        record = run(name)
        (RUNS_DIR / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: {record['seconds']} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
