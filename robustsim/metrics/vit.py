"""ViT embedding metrics: CLIP / OpenCLIP (open_clip) and DINO (timm), built as their authors built them
(OpenAI CLIP with QuickGELU, OpenCLIP with GELU, DINO's CLS token), their official weights read from
``weights=`` (the zoo rows hand over the file the weights manager resolved). ``arch=`` swaps the architecture
(e.g. a tiny config for tests or another ViT of the same family).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from robustsim.compat import import_optional
from robustsim.errors import WeightsError
from robustsim.metrics.base import EmbeddingMetric
from robustsim.metrics.preprocess import Resize
from robustsim.metrics.weights import load_state_dict, resolve_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def local_weights(name: str, weights: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """The state dict of ``weights=`` (WeightsError naming both ways to give one when it is None)."""
    hint = f"no weights given; pass weights=PATH, or build it with robustsim.load_metric({name!r})"
    return load_state_dict(resolve_weights(name, weights, [], hint))


class _OpenClipVisual(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


class OpenClipMetric(EmbeddingMetric):
    """1 - cos between CLIP image embeddings (open_clip architecture ``arch``, default ViT-B-16).

    ``visual_only``: the weight file is a state dict of ``model.visual`` alone, as R-CLIP's releases are
    (fra31/perceptual-metrics ``utils_perceptual_models.py``: ``model.visual.load_state_dict(ckpt, strict=True)``).
    ``lora`` (a folder): a peft LoRA adapter of the vision tower, merged in
    (:mod:`robustsim.metrics.lora`; R-CLIP's NIGHTS-tuned ConvNeXt, ``utils_lora.load_lora_models``).
    """

    def __init__(
        self,
        name: str = "clip-vitb16",
        arch: str = "ViT-B-16",
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        input_size: int = 224,
        quick_gelu: bool = True,
        resizing: Resize | None = None,
        visual_only: bool = False,
        lora: str | os.PathLike | None = None,
        validate: bool = True,
    ) -> None:
        open_clip = import_optional("open_clip")
        sd = local_weights(name, weights) if pretrained else None
        model = open_clip.create_model(arch, pretrained=None, quick_gelu=quick_gelu)
        if sd is not None:
            target = model.visual if visual_only else model
            try:
                target.load_state_dict(sd)
            except RuntimeError as err:
                what = "open_clip's model.visual" if visual_only else "the open_clip model"
                raise WeightsError(
                    f"{name}: the weights do not fit {what} of {arch} ({str(err).splitlines()[1].strip()})"
                ) from None
        if lora is not None:
            from robustsim.metrics.lora import merge_lora

            merge_lora(model.visual, Path(lora))
        super().__init__(
            _OpenClipVisual(model.visual),
            input_size=None if resizing is not None else input_size,
            resizing=resizing,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            name=name,
            validate=validate,
        )
        self.eval().requires_grad_(False)


class TimmViTMetric(EmbeddingMetric):
    """1 - cos between the CLS features of a timm ViT (default DINO ViT-B/16)."""

    def __init__(
        self,
        name: str = "dino-vitb16",
        arch: str = "vit_base_patch16_224",
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        input_size: int = 224,
        resizing: Resize | None = None,
        validate: bool = True,
    ) -> None:
        timm = import_optional("timm")
        net = timm.create_model(arch, pretrained=False, num_classes=0, img_size=input_size)
        if pretrained:
            sd = {k: v for k, v in local_weights(name, weights).items() if not k.startswith("head.")}
            net.load_state_dict(sd)
        super().__init__(
            net,
            input_size=None if resizing is not None else input_size,
            resizing=resizing,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            name=name,
            validate=validate,
        )
        self.eval().requires_grad_(False)
