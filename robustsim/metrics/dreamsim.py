"""DreamSim (Fu et al. 2023) as released: the ``dreamsim`` package's own model (its ViT extractors, LoRA
adapters tuned on NIGHTS, mean-centred unit-norm embeddings), with every weight file resolved through
robustsim's weights manager (the release zip and DINO's backbone; DINO is built from DreamSim's copy of
DINO's ``vision_transformer`` instead of code fetched through torch.hub).

``variant`` picks a released checkpoint: ``ensemble`` (DINO + CLIP + OpenCLIP ViT-B/16, the paper's
DreamSim) or a single-backbone model (``dino_vitb16``, ``clip_vitb32``, ``open_clip_vitb32``). Inputs are
[0, 1] images, resized as the package's ``dreamsim()`` preprocessing does (``dreamsim/model.py``: Resize((224,
224), BICUBIC) of the PIL image, antialiased); the distance is the package's 1 - cos of the embeddings.
``lora=False`` is the package's model without its NIGHTS adapters (``dreamsim(pretrained=False)``): DreamSim's
untuned ensemble, whose base ViTs come from the same release archive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from robustsim.compat import import_optional
from robustsim.errors import InputError, WeightsError
from robustsim.metrics.base import EmbeddingMetric
from robustsim.metrics.preprocess import Resize

VARIANTS = ("ensemble", "dino_vitb16", "clip_vitb32", "open_clip_vitb32")
DREAMSIM_RESIZE = Resize(224, "bicubic", antialias=True)
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "bias", "target_modules")


class _Embed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


class DreamSimMetric(EmbeddingMetric):
    """DreamSim ``variant`` (see module docstring). ``folder`` (an unpacked release), ``config`` (a
    ``dreamsim_args`` model config) and ``backbones`` ({dino model type: weight file}) override the
    released pieces, for tests and for checkpoints of the same format."""

    def __init__(
        self,
        variant: str = "ensemble",
        folder: str | os.PathLike | None = None,
        config: dict | None = None,
        backbones: dict[str, str | os.PathLike] | None = None,
        lora: bool = True,
        name: str | None = None,
        resizing: Resize | None = None,
        validate: bool = True,
    ) -> None:
        import_optional("dreamsim")
        from dreamsim.config import dreamsim_args
        from dreamsim.model import PerceptualModel
        from peft import LoraConfig, PeftModel, get_peft_model

        from robustsim.weights.hub import managed_downloads

        if config is None and variant not in VARIANTS:
            raise InputError(f"unknown DreamSim variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if folder is None:
            what = "dreamsim" if variant == "ensemble" else f"dreamsim-{variant.replace('_', '-')}"
            raise WeightsError(f"no release folder given; pass folder=PATH, or build it with load_metric({what!r})")
        cfg = dict(config or dreamsim_args["model_config"][variant])
        folder = Path(folder)
        types = cfg["model_type"].split(",")
        with managed_downloads({k: Path(v) for k, v in (backbones or {}).items()}):
            model = PerceptualModel(**cfg, device="cpu", load_dir=str(folder), normalize_embeds=True)
        if lora:
            tag = "ensemble_" if len(types) > 1 else f"{types[0]}_single_"
            lora_dir = folder / f"{tag}lora"
            adapter = json.loads((lora_dir / "adapter_config.json").read_text())
            model = get_peft_model(model, LoraConfig(**{k: adapter[k] for k in LORA_KEYS}))
            model = PeftModel.from_pretrained(model.base_model.model, str(lora_dir))
        default_name = "dreamsim" if variant == "ensemble" else f"dreamsim-{variant.replace('_', '-')}"
        super().__init__(
            _Embed(model),
            resizing=resizing or DREAMSIM_RESIZE,
            mean=0.0,
            std=1.0,
            name=name or (default_name if lora else f"{default_name}-base"),
            validate=validate,
        )
        self.variant = variant
        self.eval().requires_grad_(False)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        device = self.device  # the package's extractors keep a device of their own for their projections
        inner = self.net.model.base_model.model if hasattr(self.net.model, "base_model") else self.net.model
        inner.device = device
        for extractor in getattr(inner, "extractor_list", []):
            extractor.device = device
        return out
