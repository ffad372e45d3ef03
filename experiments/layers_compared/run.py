"""layers_compared: 1-Lipschitz layer kinds (SLL, AOL, CPL, AOC) x fine-tuning losses (hinge, certified) at one
equal CPU budget, plus radius-aware fine-tuning of the shipped lipsim-nano (the candidates for shipping).

Every configuration: the nano preset at 64 px with its layer kind, distilled from the shipped recipe's
teacher (dinov2-s14 + effnet-lite0) on mini:train images for the same wall-clock budget, then fine-tuned on
mini:train triplets for the same budget with the hinge or the certified loss (selected on mini:val by
certified accuracy at 36/255), then certified on mini:test. Budgets are step counts derived once from
each kind's measured step time on this machine (2 CPU cores; ``--calibrate`` re-measures), so re-runs
are deterministic.

Run from the repo root after `make demo`'s set-up:  .venv/bin/python experiments/layers_compared/run.py
(``--check`` compares with the committed table.md, tolerance 1.5 points). Writes
results/layers_compared/{results.json, table.md, pareto.png}; about 40 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tables import check_table, markdown_table  # noqa: E402

import robustsim  # noqa: E402
from robustsim.certify import certify_2afc  # noqa: E402
from robustsim.data import open_triplets  # noqa: E402
from robustsim.io import write_json  # noqa: E402
from robustsim.models import PRESETS, LipSimNet, load_net  # noqa: E402
from robustsim.models.lipsim import LipSimMetric  # noqa: E402
from robustsim.plots import save_figure  # noqa: E402
from robustsim.train import distill, finetune  # noqa: E402

LAYER_KINDS = ["sll", "aol", "cpl", "aoc"]
LOSSES = ["hinge", "certified"]
EPS = [36 / 255, 72 / 255, 108 / 255]
TEACHER = "dinov2-s14+effnet-lite0"
#: steps per layer kind that fill the budgets (measured with --calibrate on the 2-core CI machine, 2026-11-25)
STEPS = {
    "distill": {"sll": 365, "aol": 605, "cpl": 299, "aoc": 482},
    "finetune": {"sll": 146, "aol": 285, "cpl": 150, "aoc": 180},
}
SHIP_WEIGHTS = [1.0, 3.0]


def step_seconds(layer: str, batch: int, images_per_item: int, size: int = 64, repeats: int = 3) -> float:
    """Seconds per training step of the nano student of ``layer`` (forward + backward + Adam), measured."""
    torch.manual_seed(0)
    net = LipSimNet(replace(PRESETS["nano"], layer=layer), embed_dim=2560, input_size=size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch * images_per_item, 3, size, size) - 0.5
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def evaluate(path: Path) -> dict:
    metric = LipSimMetric(load_net(path)[0])
    res = certify_2afc(metric, open_triplets("mini:test"), EPS, progress=False)
    return {"clean": res.clean_score, "certified": [res.certified_at(e) for e in EPS]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/layers_compared")
    ap.add_argument("--distill-seconds", type=float, default=240.0)
    ap.add_argument("--finetune-seconds", type=float, default=60.0)
    ap.add_argument("--calibrate", action="store_true", help="measure step times and derive the step budgets")
    ap.add_argument("--check", action="store_true", help="compare with the committed table.md (1.5 points)")
    args = ap.parse_args()
    out = Path(args.out)
    run = {"epochs": 1000, "lr": 0.01, "warmup": 0.05, "seed": 0, "device": "cpu", "progress": False}
    steps = json.loads(json.dumps(STEPS))
    done = out / "progress.json"  # finished configurations: a re-run continues where a run stopped
    results: dict = json.loads(done.read_text()) if done.is_file() and not args.calibrate else {}
    timing = results.get("seconds_per_step") or {}
    for layer in LAYER_KINDS:
        if layer not in timing:
            timing[layer] = {"distill": step_seconds(layer, 64, 2), "finetune": step_seconds(layer, 32, 3)}
        if args.calibrate or not all(steps[s][layer] for s in steps):
            steps["distill"][layer] = max(1, int(args.distill_seconds / timing[layer]["distill"]))
            steps["finetune"][layer] = max(1, int(args.finetune_seconds / timing[layer]["finetune"]))
    print(json.dumps({"steps": steps, "seconds_per_step": timing}), flush=True)
    results = {"configs": results.get("configs", {}), "ship": {}, "steps": steps, "seconds_per_step": timing}
    for layer in LAYER_KINDS:
        if all(f"{layer}/{loss}" in results["configs"] for loss in LOSSES):
            continue
        d_out = out / f"distill-{layer}"
        t0 = time.perf_counter()
        distill(
            out=d_out,
            teacher=TEACHER,
            student="nano",
            images="mini",
            val_images=None,
            input_size=64,
            eval_data="",
            layer=layer,
            batch_size=64,
            max_steps=steps["distill"][layer],
            **run,
        )
        d_secs = time.perf_counter() - t0
        for loss in LOSSES:
            f_out = out / f"finetune-{layer}-{loss}"
            t0 = time.perf_counter()
            finetune(
                out=f_out,
                init=d_out / "last",
                data="mini",
                margin=0.5,
                select="certified",
                eval_data=None,
                loss=loss,
                batch_size=32,
                max_steps=steps["finetune"][layer],
                **{**run, "lr": 1e-3},
            )
            f_secs = time.perf_counter() - t0
            row = evaluate(f_out / "best")
            row.update(params=params(load_net(f_out / "best")[0]), distill_seconds=d_secs, finetune_seconds=f_secs)
            results["configs"][f"{layer}/{loss}"] = row
            write_json(done, results)
            print(layer, loss, row, flush=True)
    shipped = Path(robustsim.__file__).parent / "zoo" / "lipsim-nano"
    results["ship"]["lipsim-nano (shipped)"] = evaluate(shipped)
    for weight in [0.0, *SHIP_WEIGHTS]:
        loss = "hinge" if weight == 0 else "certified"
        name = f"lipsim-nano + 1 epoch {loss}" + (f" (weight {weight:g})" if weight else "")
        f_out = out / f"ship-{loss}-{weight:g}"
        finetune(
            out=f_out,
            init=shipped,
            data="mini",
            margin=0.5,
            select="certified",
            eval_data=None,
            loss=loss,
            radius_weight=max(weight, 1.0),
            epochs=1,
            batch_size=32,
            lr=1e-3,
            warmup=0.05,
            seed=0,
            device="cpu",
            progress=False,
        )
        results["ship"][name] = evaluate(f_out / "best")
        print(name, results["ship"][name], flush=True)
    write_json(out / "results.json", results)
    text = table(results)
    (out / "table.md").write_text(text)
    save_figure(pareto(results), out / "pareto.png")
    print(text)
    if args.check and not check_table(text, HERE / "table.md", tol=1.5):
        sys.exit(1)


def table(results: dict) -> str:
    rows = []
    for name, r in results["configs"].items():
        layer = name.split("/")[0]
        rows.append(
            (
                name,
                r["params"],
                f"{results['seconds_per_step'][layer]['distill']:.2f}",
                results["steps"]["distill"][layer],
                100 * r["clean"],
                *(100 * c for c in r["certified"]),
            )
        )
    head = [
        "layer / loss",
        "params",
        "s / distill step",
        "distill steps",
        "clean",
        "cert. 36/255",
        "cert. 72/255",
        "cert. 108/255",
    ]
    ship = [(name, 100 * r["clean"], *(100 * c for c in r["certified"])) for name, r in results["ship"].items()]
    return (
        markdown_table(head, rows)
        + "\n"
        + markdown_table(["candidate", "clean", "cert. 36/255", "cert. 72/255", "cert. 108/255"], ship)
    )


def pareto(results: dict):
    import matplotlib.pyplot as plt

    from robustsim.plots import PALETTE

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, layer in enumerate(LAYER_KINDS):
        for loss, marker in zip(LOSSES, ("o", "s"), strict=True):
            r = results["configs"][f"{layer}/{loss}"]
            ax.scatter(
                100 * r["clean"], 100 * r["certified"][0], color=PALETTE[i], marker=marker, label=f"{layer} {loss}"
            )
    for j, (name, r) in enumerate(results["ship"].items()):
        ax.scatter(100 * r["clean"], 100 * r["certified"][0], color="black", marker="*^vD"[j % 4], s=80, label=name)
    ax.set_xlabel("clean 2AFC on mini:test (%)")
    ax.set_ylabel("certified 2AFC at l2 36/255 (%)")
    ax.set_title("clean vs certified: equal-budget layer kinds and nano fine-tunes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


if __name__ == "__main__":
    main()
