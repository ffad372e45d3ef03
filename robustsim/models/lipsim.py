"""LipSimNet: a 1-Lipschitz (l2) embedding network of SLL layers, after LipSim (Ghazanfari et al.).

PaddingChannels(3 -> C) -> convs/2 SLL convs -> LipPool(4) -> convs/2 SLL convs -> LipPool(4)
-> flatten -> semi-orthogonal projection to ``width`` -> M SLL linear layers -> semi-orthogonal
projection to ``embed_dim``. Every stage is 1-Lipschitz, so the net is; ``lipschitz_bound()`` derives that
from the layers.
Presets are rows of a table; the input size is a parameter (divisible by 16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from robustsim.metrics.base import EmbeddingMetric
from robustsim.nn import LipPool, PaddingChannels, Projection, SLLConv2d, SLLLinear


@dataclass(frozen=True)
class LipSimPreset:
    convs: int
    channels: int
    linears: int
    width: int


PRESETS: dict[str, LipSimPreset] = {
    # published LipSim sizes (science.md section 3)
    "small": LipSimPreset(20, 45, 7, 1024),
    "medium": LipSimPreset(30, 60, 10, 2048),
    "large": LipSimPreset(50, 90, 10, 2048),
    "xlarge": LipSimPreset(70, 120, 15, 2048),
    # CPU presets: train in minutes on 2 cores at 64 px
    "tiny": LipSimPreset(8, 32, 3, 512),
    "nano": LipSimPreset(4, 16, 2, 256),
}


#: sizes a checkpoint config may ask for (a config is data: it must not be able to ask for terabytes)
CONFIG_LIMITS = {
    "convs": (0, 512),
    "channels": (3, 4096),
    "linears": (0, 512),
    "width": (1, 65536),
    "embed_dim": (1, 65536),
    "input_size": (16, 4096),
}


def _bounded(key: str, value: object) -> int:
    lo, hi = CONFIG_LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


class LipSimNet(nn.Module):
    """The LipSim student; ``forward`` maps (B, 3, S, S) to (B, embed_dim)."""

    def lipschitz_bound(self) -> float:
        """The product of the bounds its stages prove (``features`` then ``head``), derived from the
        layers, not declared."""
        from robustsim.certify.lipschitz import lipschitz_bound

        return lipschitz_bound(self.features) * lipschitz_bound(self.head)

    def __init__(self, preset: str | LipSimPreset = "tiny", embed_dim: int = 1792, input_size: int = 224) -> None:
        super().__init__()
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise ValueError(f"unknown LipSim preset {preset!r}; choose one of {', '.join(PRESETS)}")
            self.preset_name, preset = preset, PRESETS[preset]
        else:
            self.preset_name = "custom"
        if input_size % 16:
            raise ValueError(f"input_size must be divisible by 16 (two 4x4 poolings), got {input_size}")
        self.preset, self.embed_dim, self.input_size = preset, embed_dim, input_size
        c = preset.channels
        first = preset.convs // 2
        self.features = nn.Sequential(
            PaddingChannels(c),
            *[SLLConv2d(c) for _ in range(first)],
            LipPool(4),
            *[SLLConv2d(c) for _ in range(preset.convs - first)],
            LipPool(4),
            nn.Flatten(),
        )
        flat = c * (input_size // 16) ** 2
        self.head = nn.Sequential(
            Projection(flat, preset.width),
            *[SLLLinear(preset.width) for _ in range(preset.linears)],
            Projection(preset.width, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def config(self) -> dict:
        return {
            "arch": "lipsim",
            "preset": self.preset_name,
            "layers": asdict(self.preset),
            "embed_dim": self.embed_dim,
            "input_size": self.input_size,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> LipSimNet:
        """Build from a saved config; every size must be an integer within :data:`CONFIG_LIMITS`."""
        if isinstance(cfg.get("preset"), str) and cfg["preset"] in PRESETS:
            preset: str | LipSimPreset = cfg["preset"]
        else:
            layers = cfg["layers"]
            if not isinstance(layers, dict) or set(layers) != set(LipSimPreset.__dataclass_fields__):
                raise ValueError(f"layers must give {', '.join(LipSimPreset.__dataclass_fields__)}")
            preset = LipSimPreset(**{k: _bounded(k, v) for k, v in layers.items()})
        embed_dim, input_size = _bounded("embed_dim", cfg["embed_dim"]), _bounded("input_size", cfg["input_size"])
        return cls(preset, embed_dim=embed_dim, input_size=input_size)


class LipSimMetric(EmbeddingMetric):
    """A LipSimNet as an embedding metric. Input is centred (x - 0.5), not scaled; certificates take the
    net's bound from its layers and the resize's exact norm for the caller's image size."""

    def __init__(self, net: LipSimNet, name: str = "lipsim", validate: bool = True) -> None:
        super().__init__(net, input_size=net.input_size, mean=0.5, std=1.0, name=name, validate=validate)

    @property
    def lipschitz(self) -> float:  # type: ignore[override]
        """The network's bound, derived from its layers (see :meth:`LipSimNet.lipschitz_bound`)."""
        return self.net.lipschitz_bound()

    @lipschitz.setter
    def lipschitz(self, value: float | None) -> None:  # the base class assigns it; the bound is derived
        pass
