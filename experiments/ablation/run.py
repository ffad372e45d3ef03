"""ablation: the shipped lipsim-nano-aoc recipe (experiments/shipped_checkpoint/train_aoc.sh) at its fixed budget
(482 distillation + 180 fine-tuning steps), each row one change, each certified on mini:test in exact arithmetic
(float64 deployment) and as float32 deploys it.

The recipe is run through the command line, as a user would (one folder per row under results/ablation/); a row whose
folder holds both certificates is read, not rerun, so the script continues after a kill (a row killed mid-run is
started over; a row that changes fine-tuning alone starts from the recipe row's distilled net). Steps, not seconds,
fix the budget: the numbers are the same on any machine for a fixed seed and
thread count (ROBUSTSIM_THREADS=1 here, so a row runs beside other work); the minutes column is this machine's.

Run from the repo root after `make demo`'s set-up:  .venv/bin/python experiments/ablation/run.py [ROW ...]
(``--check`` compares with the committed table.md, tolerance 1.5 points). Writes results/ablation/{results.json,
table.md}; about 10 minutes a row on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tables import check_table, markdown_table  # noqa: E402

from robustsim.io import write_json  # noqa: E402

RUNS = Path("results/ablation")
DISTILL = {
    "--teacher": "dinov2-s14+effnet-lite0", "--student": "nano", "--layer": "aoc", "--input-size": "64",
    "--images": "mini", "--epochs": "1000", "--max-steps": "482", "--batch-size": "64", "--lr": "0.01",
    "--warmup": "0.05", "--seed": "0", "--device": "cpu",
}  # fmt: skip
FINETUNE = {
    "--data": "mini", "--margin": "0.5", "--loss": "certified", "--target-eps": "36/255", "--radius-weight": "1",
    "--epochs": "1000", "--max-steps": "180", "--batch-size": "32", "--lr": "0.001", "--warmup": "0.05",
    "--select": "certified", "--select-eps": "36/255", "--seed": "0", "--device": "cpu",
}  # fmt: skip
#: row name -> (what changes, distillation overrides, fine-tuning overrides)
ROWS: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "recipe": ("the shipped aoc recipe as it is", {}, {}),
    "teacher-effnet-ensemble": ("teacher effnet-ensemble (94.2 clean on mini:test) for dinov2-s14+effnet-lite0",
                                {"--teacher": "effnet-ensemble"}, {}),  # fmt: skip
    "target-72": ("certified loss aiming at 72/255 instead of 36/255", {}, {"--target-eps": "72/255"}),
    "radius-weight-3": ("radius term weighted 3 instead of 1", {}, {"--radius-weight": "3"}),
    "distill-2x": ("twice the distillation steps (964), fine-tuning as it is", {"--max-steps": "964"}, {}),
}
EPS = ("36/255", "72/255", "108/255")


def _args(options: dict[str, str]) -> list[str]:
    return [a for k, v in options.items() for a in (k, v)]


def _certified(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {"clean": 100 * data["clean"], **{e: 100 * c["certified"] for e, c in zip(EPS, data["curve"], strict=True)}}


def run_row(name: str) -> dict:
    """The row's folder's certificates, running the recipe with the row's change first when they are missing."""
    _, distill, finetune = ROWS[name]
    out = RUNS / name
    done = [out / "certify64.json", out / "certify32.json"]
    if not all(p.is_file() for p in done):
        bin_ = Path(sys.executable).parent
        env = {**os.environ, "ROBUSTSIM_THREADS": "1"}
        t0 = time.time()
        if distill or name == "recipe":
            init = out / "distill" / "last"
            steps = [["train", "distill", *_args({**DISTILL, **distill}), "--out", str(out / "distill")]]
        else:  # the recipe's own distillation (the same command): fine-tuning alone changes
            run_row("recipe")
            init, steps = RUNS / "recipe" / "distill" / "last", []
        steps += [
            ["train", "finetune", "--init", str(init), *_args({**FINETUNE, **finetune}), "--out",
             str(out / "finetune")],  # fmt: skip
            ["certify", "--metric", str(out / "finetune" / "best"), "--data", "mini", "--device", "cpu", "--dtype",
             "float64", "--json", str(done[0])],  # fmt: skip
            ["certify", "--metric", str(out / "finetune" / "best"), "--data", "mini", "--device", "cpu", "--json",
             str(done[1])],  # fmt: skip
        ]
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for argv in steps:
            subprocess.run([str(bin_ / "robustsim"), *argv], check=True, env=env, stdout=subprocess.DEVNULL)
        (out / "minutes.txt").write_text(f"{(time.time() - t0) / 60:.1f}\n")
    minutes = float((out / "minutes.txt").read_text()) if (out / "minutes.txt").is_file() else None
    return {"float64": _certified(done[0]), "float32": _certified(done[1]), "minutes": minutes}


def table(results: dict) -> str:
    head = ["row", "change", "clean", *[f"cert. {e}" for e in EPS], *[f"f32 {e}" for e in EPS], "minutes"]
    rows = []
    for name, what in ((n, ROWS[n][0]) for n in ROWS if n in results):
        r = results[name]
        f64, f32 = r["float64"], r["float32"]
        rows.append([name, what, f64["clean"], *[f64[e] for e in EPS], *[f32[e] for e in EPS], r["minutes"] or "-"])
    return markdown_table(head, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="*", help=f"rows to run (default: all): {', '.join(ROWS)}")
    parser.add_argument("--check", action="store_true", help="compare with the committed table.md (1.5 points)")
    args = parser.parse_args()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    path = RUNS / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.rows or list(ROWS):
        results[name] = run_row(name)
        write_json(path, results)
        print(f"{name}: {results[name]}", flush=True)
    text = table(results)
    if args.check and not check_table(text, HERE / "table.md", tol=1.5):
        sys.exit(1)
    (RUNS / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
