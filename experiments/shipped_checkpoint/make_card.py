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

import robustsim
from robustsim.certify import certify_2afc, estimate_lipschitz
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


def ms_per_image(metric, test) -> dict[str, float]:
    """Milliseconds per image, one thread, median of 7: float32 and float64, one forward pass of 64 images;
    adaptive, the 2AFC decisions of the first 192 triplets of ``test`` in batches of 64 (a float32 forward with its
    rounding bound, the float64 twin for the triplets float32 leaves open), per image decided."""
    import statistics
    import time

    import torch

    from robustsim.certify.rounding import twin
    from robustsim.score2afc import triplet_distances

    x = torch.stack([test[i]["ref"] for i in range(64)])
    keys = ("ref", "x0", "x1")
    triplets = [[torch.stack([test[i][k] for i in range(s, s + 64)]) for k in keys] for s in (0, 64, 128)]
    sides = {
        "float32": (lambda: metric.embed(x), x.shape[0]),
        "adaptive": (lambda: [triplet_distances(metric, *t) for t in triplets], 3 * 192),
        "float64": (lambda: twin(metric).embed(x.double()), x.shape[0]),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, (run, images) in sides.items():
            metric.decisions = "adaptive" if name == "adaptive" else "plain"
            with torch.no_grad():
                run()
                times = []
                for _ in range(7):
                    t0 = time.process_time()
                    run()
                    times.append(time.process_time() - t0)
            out[name] = round(1000 * statistics.median(times) / images, 3)
    finally:
        metric.decisions = "adaptive"
        torch.set_num_threads(threads)
    return out


def deployments(metric, test) -> dict:
    """The card's fields of each deployment: certified accuracy in float32, adaptive (the default) and float64, and
    the cost of each."""
    from robustsim.certify.rounding import twin

    metric.decisions = "plain"
    res = certify_2afc(metric, test, EPS, progress=False)  # the decision as float32 arithmetic takes it
    metric.decisions = "adaptive"
    res_a = certify_2afc(metric, test, EPS, progress=False)  # float32, the exact decision where float32 is unsure
    res64 = certify_2afc(twin(metric), test, EPS, progress=False)  # the same network run in float64
    at = lambda r: {f"{round(e * 255)}/255": r.certified_at(e) for e in EPS}  # noqa: E731
    return {
        "clean": res.clean_score,
        "certified": at(res),
        "certified_adaptive": at(res_a),
        "certified_float64": at(res64),
        "certified_note": "certified = sound l2 radius of the decision the metric computes in float32 (its rounding "
        "bounded; load_metric(name, dtype='float32')); certified_adaptive = the default deployment (float32, the "
        "exact decision from the float64 twin where float32 cannot resolve it: robustsim.certify.adaptive; "
        f"fallback on {100 * res_a.details['decisions']['clean']['fallback_rate']:.1f} % of the clean triplets); "
        "certified_float64 = the same network deployed in float64 (load_metric(name, dtype='float64'))",
        "ms_per_image": ms_per_image(metric, test),
        "ms_per_image_note": "float32 and float64: one forward pass per image, batches of 64; adaptive: its 2AFC "
        "decisions per image of 192 mini:test triplets, batches of 64 triplets; one CPU thread "
        "(benchmarks/bench_decide.py compares them side by side)",
    }


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
    fields = deployments(metric, test)
    import torch

    x = torch.stack([test[i]["ref"] for i in range(8)])
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
        **fields,
        "baselines_clean": baselines,
    }
    write_json(tmp / "card.json", card)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--deployments"]:  # recompute only the deployments' fields of a shipped card
        shipped = Path(robustsim.__file__).parent / "zoo" / sys.argv[2]
        card = json.loads((shipped / "card.json").read_text())
        card.update(deployments(robustsim.load_metric(sys.argv[2]), open_triplets("mini:test")))
        write_json(shipped / "card.json", card)
        print(json.dumps(card, indent=1))
    elif sys.argv[1:2] == ["--refresh"]:
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
