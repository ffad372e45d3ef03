"""LoRA adapters saved by peft (``adapter_config.json`` + ``adapter_model.safetensors|bin``) merged into the
linear (or convolution) layers they adapt: W <- W + (lora_alpha / r) B A, what peft's model computes in eval
mode (dropout off).
Keys are matched to modules by their path's tail, so the wrapper a training script put around the network
(peft's ``base_model.model.`` and, in R-CLIP's ``vit_wrapper.ViTModel``, ``model.`` plus a ``blocks`` alias of the
same layers) does not matter; an adapter naming a layer the network lacks is refused."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from robustsim.errors import WeightsError
from robustsim.metrics.weights import read_checkpoint


def adapter_folder(root: Path) -> Path:
    """The folder holding ``adapter_config.json`` (``root`` or one level below: an unpacked share)."""
    for cand in (root, *sorted(p for p in Path(root).iterdir() if p.is_dir())):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise WeightsError(f"{root} holds no adapter_config.json; pass the folder peft's save_pretrained wrote")


def merge_lora(net: nn.Module, root: str | Path) -> int:
    """Merge the adapter in ``root`` into ``net`` (in place); returns how many layers it changed."""
    folder = adapter_folder(Path(root))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise WeightsError(f"{folder}: rsLoRA / DoRA adapters are not supported; a plain LoRA is")
    weights = next(
        (folder / f for f in ("adapter_model.safetensors", "adapter_model.bin") if (folder / f).is_file()), None
    )
    if weights is None:
        raise WeightsError(f"{folder} has no adapter_model.safetensors or adapter_model.bin")
    sd = read_checkpoint(weights)
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    linears = {name: m for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    done: set[int] = set()
    for key in sorted(k for k in sd if ".lora_A." in k):
        stem = key.split(".lora_A.")[0]
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in sd:
            raise WeightsError(f"{weights}: {key} has no lora_B partner")
        match = max((n for n in linears if stem == n or stem.endswith("." + n)), key=len, default=None)
        if match is None:
            raise WeightsError(f"{weights}: the adapter adapts {stem}, a layer this network does not have")
        layer = linears[match]
        if id(layer) in done:  # the same layer under an alias path (a wrapper's ``blocks``)
            continue
        a, b = sd[key].to(torch.float64), sd[b_key].to(torch.float64)
        if b.dim() > 2 and any(k != 1 for k in b.shape[2:]):
            raise WeightsError(f"{weights}: {b_key} is not a 1x1 lora_B; only peft's layout is read")
        delta = (b.flatten(1) @ a.flatten(1)).reshape(layer.weight.shape)  # peft's conv LoRA: A carries the kernel
        with torch.no_grad():
            layer.weight.copy_((layer.weight.double() + scale * delta).to(layer.weight.dtype))
        done.add(id(layer))
    if not done:
        raise WeightsError(f"{weights} holds no LoRA weights (lora_A / lora_B)")
    return len(done)
