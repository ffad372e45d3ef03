"""Copy a selected checkpoint into the package as a shipped metric and write its metric card.

Usage: python experiments/shipped_checkpoint/make_card.py [RUN [NAME]]
  after train.sh:       make_card.py runs/shipped lipsim-nano
  after train_cert.sh:  make_card.py runs/shipped-cert lipsim-nano-cert
  re-export a shipped metric (frozen) and recompute its card:  make_card.py --refresh NAME
Writes robustsim/zoo/NAME/{config.json, model.safetensors, card.json}. The checkpoint is frozen: every
weight-derived tensor the network applies (orthogonal kernels, projections, SLL's folded kernels) is stored,
so the shipped metric is one fixed function on every machine. The card holds the Lipschitz bound derived from
those tensors and the clean 2AFC and certified accuracy on mini's test split next to l2 / ssim / effnet
baselines.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from robustsim.certify import certify_2afc, estimate_lipschitz, float64_copy

import robustsim
from robustsim.data import open_triplets
from robustsim.io import write_json
from robustsim.models import load_net, save_checkpoint
from robustsim.nn.bounds import round_up
from robustsim.score2afc import evaluate_2afc

EPS = [36 / 255, 72 / 255, 108 / 255]
RECIPES = {
    "lipsim-nano": (
        "experiments/shipped_checkpoint/train.sh",
        "distilled on mini:train images; fine-tuned on mini:train 2AFC (hinge, margin 0.5); selected on mini:val",
        "certified 1-Lipschitz LipSim nano, 64 px (shipped)",
    ),
    "lipsim-nano-cert": (
        "experiments/shipped_checkpoint/train_cert.sh",
        "lipsim-nano fine-tuned one epoch on mini:train 2AFC with the certified loss (hinge margin 0.5 + 3 x hinge "
        "on the sound radius at 36/255); selected on mini:val by certified accuracy at 36/255",
        "lipsim-nano fine-tuned with the certified loss (shipped)",
    ),
    "lipsim-nano-aoc": (
        "experiments/shipped_checkpoint/train_aoc.sh",
        "nano student of orthogonal AOC blocks distilled 482 steps on mini:train images; fine-tuned 180 steps on "
        "mini:train 2AFC with the certified loss (hinge margin 0.5 + hinge on the sound radius at 36/255, weight 1); "
        "selected on mini:val by certified accuracy at 36/255 (the aoc/certified configuration of "
        "experiments/layers_compared)",
        "certified 1-Lipschitz LipSim nano of orthogonal convolutions (shipped)",
    ),
}


def ms_per_image(metric, x) -> dict[str, float]:
    """Milliseconds per image of one forward pass in float32 and in float64 (one thread, median of 7)."""
    import statistics
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
            m = metric.to(dtype)
            with torch.no_grad():
                m.embed(x.to(dtype))
                times = []
                for _ in range(7):
                    t0 = time.process_time()
                    m.embed(x.to(dtype))
                    times.append(time.process_time() - t0)
            out[name] = round(1000 * statistics.median(times) / x.shape[0], 3)
    finally:
        metric.to(torch.float32)
        torch.set_num_threads(threads)
    return out


def main(src: Path, name: str, teacher: str | None = None) -> None:
    """Export checkpoint folder ``src`` frozen as the shipped metric ``name`` and write its card."""
    recipe, data, summary = RECIPES[name]
    dest = Path(robustsim.__file__).parent / "zoo" / name
    tmp = dest.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net, cfg = load_net(src)
    meta = {k: v for k, v in cfg.items() if k not in ("format", "version", "model")}
    meta["name"] = name
    save_checkpoint(tmp, net.freeze(), meta)
    metric = robustsim.load_metric(tmp)
    assert metric.net.frozen
    metric.net.stated_bound = round_up(metric.lipschitz)  # as load_shipped will: the card's number
    test = open_triplets("mini:test")
    res = certify_2afc(metric, test, EPS, progress=False)  # the decision as deployed: float32 arithmetic
    res64 = certify_2afc(float64_copy(metric), test, EPS, progress=False)  # the same network run in float64
    import torch

    x = torch.stack([test[i]["ref"] for i in range(8)])
    speed = ms_per_image(metric, torch.stack([test[i]["ref"] for i in range(64)]))
    baselines = {}
    for base in ("l2", "ssim", "ms-ssim", "effnet-ensemble"):
        baselines[base] = evaluate_2afc(robustsim.load_metric(base), open_triplets("mini:test"), progress=False).score
    card = {
        "name": name,
        "summary": summary,
        "architecture": f"LipSimNet preset {cfg['model']['preset']} ({cfg['model']['layers']}), "
        f"input {cfg['model']['input_size']} px, embedding {cfg['model']['embed_dim']}",
        "teacher": cfg.get("teacher") or teacher,
        "data": data,
        "recipe": recipe,
        "lipschitz_bound": metric.lipschitz,  # rounded up: the number every CPU uses
        "lipschitz_estimate": estimate_lipschitz(metric.net, x - 0.5, power_steps=30, ascent_steps=30),
        "eval": "mini:test (600 synthetic triplets, not human judgements)",
        "clean": res.clean_score,
        "certified": {f"{round(e * 255)}/255": res.certified_at(e) for e in EPS},
        "certified_float64": {f"{round(e * 255)}/255": res64.certified_at(e) for e in EPS},
        "certified_note": "certified = sound l2 radius of the decision the metric computes in float32 (its rounding "
        "bounded); certified_float64 = the same network deployed in float64 (load_metric(name, dtype='float64'))",
        "ms_per_image": speed,
        "ms_per_image_note": "one forward pass per image, batches of 64, one CPU thread (benchmarks/bench_dtype.py)",
        "baselines_clean": baselines,
    }
    write_json(tmp / "card.json", card)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--refresh"]:
        shipped = Path(robustsim.__file__).parent / "zoo" / sys.argv[2]
        old = json.loads((shipped / "card.json").read_text())
        copy = Path(tempfile.mkdtemp()) / sys.argv[2]
        shutil.copytree(shipped, copy)
        main(copy, sys.argv[2], old.get("teacher"))
    else:
        run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/shipped")
        name = sys.argv[2] if len(sys.argv) > 2 else "lipsim-nano"
        teacher = json.loads((run_dir / "distill" / "last" / "config.json").read_text())["teacher"]
        main(run_dir / "finetune" / "best", name, teacher)
