"""Copy the selected checkpoint into the package as ``lipsim-nano`` and write its metric card.

Usage (after train.sh): python experiments/shipped_checkpoint/make_card.py [runs/shipped]
Writes robustsim/zoo/lipsim-nano/{config.json, model.safetensors, card.json}; the card holds the
clean 2AFC and certified accuracy on mini's test split next to l2 / ssim / effnet baselines.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from robustsim.certify import certify_2afc, estimate_lipschitz

import robustsim
from robustsim.data import open_triplets
from robustsim.evaluate import evaluate_2afc
from robustsim.io import write_json

EPS = [36 / 255, 72 / 255, 108 / 255]
NAME = "lipsim-nano"


def main(run: Path) -> None:
    dest = Path(robustsim.__file__).parent / "zoo" / NAME
    tmp = dest.with_name(f".{NAME}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = run / "finetune" / "best"
    cfg = json.loads((src / "config.json").read_text())
    cfg["name"] = NAME
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    shutil.copy(src / "model.safetensors", tmp / "model.safetensors")
    metric = robustsim.load_metric(tmp)
    test = open_triplets("mini:test", size=metric.input_size)
    res = certify_2afc(metric, test, EPS, progress=False)
    import torch

    x = torch.stack([test[i]["ref"] for i in range(8)])
    baselines = {}
    for name in ("l2", "ssim", "ms-ssim", "effnet-ensemble"):
        baselines[name] = evaluate_2afc(robustsim.load_metric(name), open_triplets("mini:test"), progress=False).score
    card = {
        "name": NAME,
        "architecture": f"LipSimNet preset {cfg['model']['preset']} ({cfg['model']['layers']}), "
        f"input {cfg['model']['input_size']} px, embedding {cfg['model']['embed_dim']}",
        "teacher": cfg.get("teacher") or json.loads((run / "distill" / "last" / "config.json").read_text())["teacher"],
        "data": "distilled on mini:train images; fine-tuned on mini:train 2AFC (hinge, margin 0.5); "
        "selected on mini:val",
        "recipe": "experiments/shipped_checkpoint/train.sh",
        "lipschitz_bound": 1.0,
        "lipschitz_estimate": estimate_lipschitz(metric.net, x - 0.5, power_steps=30, ascent_steps=30),
        "eval": "mini:test (600 synthetic triplets, not human judgements)",
        "clean": res.clean_score,
        "certified": {f"{round(e * 255)}/255": res.certified_at(e) for e in EPS},
        "baselines_clean": baselines,
    }
    write_json(tmp / "card.json", card)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/shipped"))
