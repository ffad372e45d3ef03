"""LipSimNet: a 1-Lipschitz (l2) embedding network, after LipSim (Ghazanfari et al.).

robustsim's layout (``head="projection"``): PaddingChannels(3 -> C) -> ``split`` convs -> LipPool(4) -> the
other convs -> LipPool(4) -> flatten -> semi-orthogonal projection to ``width`` -> M linear layers ->
semi-orthogonal projection to ``embed_dim``. LipSim's own layout (``split=convs``, ``head="truncate"``): all
convs before the two poolings, M linear layers at the flattened width (inner width ``width``), then the
first ``embed_dim`` coordinates. Conv and linear layers are of kind ``layer`` (SLL by default; inner conv
width ``conv_inner``). Every stage is 1-Lipschitz, so the net is; ``certified_bound()`` derives that from
the layers. Presets are rows of a table; the input size is a parameter (divisible by 16).

A net is *frozen* (:meth:`LipSimNet.freeze`) when every weight-derived tensor it applies is stored: then it is
one fixed function, saved and loaded bit for bit (``"frozen": true`` in its config). Metrics loaded from
checkpoints are frozen; training thaws them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from robustsim.errors import InputError
from robustsim.metrics.base import EmbeddingMetric
from robustsim.metrics.preprocess import Resize
from robustsim.nn import LipPool, PaddingChannels, Projection, Truncate
from robustsim.nn.compose import lipschitz_bound
from robustsim.nn.derived import Derived, freeze, is_frozen, thaw


@dataclass(frozen=True)
class LipSimPreset:
    convs: int
    channels: int
    linears: int
    width: int
    layer: str = "sll"  # the kind of conv and linear layer (robustsim.nn.LAYERS)
    conv_inner: int = 0  # inner channels of a conv layer; 0: ``channels``
    split: int = -1  # convs before the first pooling; -1: half of them
    head: str = "projection"  # "projection" (robustsim) or "truncate" (LipSim's released layout)


REQUIRED_FIELDS = ("convs", "channels", "linears", "width")
HEADS = ("projection", "truncate")


PRESETS: dict[str, LipSimPreset] = {
    # the LipSim paper's sizes (Ghazanfari et al. 2023, docs/layers.md)
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
    "conv_inner": (0, 4096),
    "split": (-1, 512),
}


def _checked_layers(layers: object) -> LipSimPreset:
    if not isinstance(layers, dict) or not set(REQUIRED_FIELDS) <= set(layers) <= set(
        LipSimPreset.__dataclass_fields__
    ):
        raise InputError(f"layers must give {', '.join(REQUIRED_FIELDS)} (and optionally the other preset fields)")
    values: dict = {}
    for k, v in layers.items():
        if k == "layer":
            from robustsim.nn import layer_kind

            values[k] = layer_kind(v)
        elif k == "head":
            if v not in HEADS:
                raise InputError(f"head must be one of {', '.join(HEADS)}, got {v!r}")
            values[k] = v
        else:
            values[k] = _bounded(k, v)
    return LipSimPreset(**values)


def _bounded(key: str, value: object) -> int:
    lo, hi = CONFIG_LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _set_spatial(stages: nn.Sequential, size: int) -> None:
    """Tell every layer that proves its bound at its input size (CPL, AOC) what that size is."""
    for stage in stages:
        for sub in stage.modules():
            if hasattr(sub, "spatial"):
                sub.spatial = size
        if isinstance(stage, LipPool):
            size //= stage.k


class LipSimNet(nn.Module):
    """The LipSim student; ``forward`` maps (B, 3, S, S) to (B, embed_dim)."""

    #: a bound stated for this exact network (a shipped card's, rounded up): used when the derived one is below it
    stated_bound: float | None = None

    def certified_bound(self) -> float:
        """The bound of the function it runs at its input size (:func:`robustsim.nn.compose.lipschitz_bound`), or the
        :attr:`stated_bound` when that is larger. The max of a proven bound and any number is a bound, so a stated
        number can only make it larger (sound whatever it says); a card's number, rounded up from the derived one,
        is what every CPU then reports, whatever the last ulp of its own SVD."""
        derived = lipschitz_bound(self, (3, self.input_size, self.input_size))
        return max(derived, self.stated_bound or 0.0)

    def __init__(self, preset: str | LipSimPreset = "tiny", embed_dim: int = 1792, input_size: int = 224) -> None:
        super().__init__()
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise InputError(f"unknown LipSim preset {preset!r}; choose one of {', '.join(PRESETS)}")
            self.preset_name, preset = preset, PRESETS[preset]
        else:
            self.preset_name = "custom"
        if input_size % 16:
            raise InputError(f"input_size must be divisible by 16 (two 4x4 poolings), got {input_size}")
        from robustsim.nn import LAYERS

        self.preset, self.embed_dim, self.input_size = preset, embed_dim, input_size
        conv, linear = LAYERS[preset.layer]
        c, inner = preset.channels, preset.conv_inner or preset.channels
        first = preset.convs // 2 if preset.split < 0 else min(preset.split, preset.convs)
        self.features = nn.Sequential(
            PaddingChannels(c),
            *[conv(c, inner) for _ in range(first)],
            LipPool(4),
            *[conv(c, inner) for _ in range(preset.convs - first)],
            LipPool(4),
            nn.Flatten(),
        )
        _set_spatial(self.features, input_size)
        flat = c * (input_size // 16) ** 2
        if preset.head == "truncate":
            if embed_dim > flat:
                raise InputError(f"a truncating head keeps {embed_dim} of {flat} coordinates; lower embed_dim")
            self.head = nn.Sequential(*[linear(flat, preset.width) for _ in range(preset.linears)], Truncate(embed_dim))
        else:
            self.head = nn.Sequential(
                Projection(flat, preset.width),
                *[linear(preset.width, preset.width) for _ in range(preset.linears)],
                Projection(preset.width, embed_dim),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def config(self) -> dict:
        cfg = {
            "arch": "lipsim",
            "preset": self.preset_name,
            "layers": asdict(self.preset),
            "embed_dim": self.embed_dim,
            "input_size": self.input_size,
        }
        if self.frozen:
            cfg["frozen"] = True
        return cfg

    @property
    def frozen(self) -> bool:
        return is_frozen(self)

    def freeze(self) -> LipSimNet:
        """Store every weight-derived tensor (module docstring); in place, returns self."""
        return freeze(self)

    def thaw(self) -> LipSimNet:
        """Derive the tensors from the weights again (to train); in place, returns self."""
        return thaw(self)

    @staticmethod
    def parameter_count(cfg: dict) -> float:
        """An upper bound on the parameters a config asks for, computed without building anything."""
        preset = (
            PRESETS[cfg["preset"]]
            if isinstance(cfg.get("preset"), str) and cfg["preset"] in PRESETS
            else (_checked_layers(cfg["layers"]))
        )
        size = _bounded("input_size", cfg["input_size"])
        embed = _bounded("embed_dim", cfg["embed_dim"])
        c, inner, w = preset.channels, max(preset.conv_inner, preset.channels), preset.width
        flat = c * (size // 16) ** 2
        convs = preset.convs * (inner * c * 9 + 2 * inner + c)
        linears = preset.linears * (max(flat, w) * w + 2 * w + flat)
        return float(convs + linears + flat * w + w * embed)

    @classmethod
    def from_config(cls, cfg: dict) -> LipSimNet:
        """Build from a saved config (its ``layers``, else its preset name); every size must be an integer
        within :data:`CONFIG_LIMITS`."""
        if "layers" in cfg:
            preset: str | LipSimPreset = _checked_layers(cfg["layers"])
            if isinstance(cfg.get("preset"), str) and PRESETS.get(cfg["preset"]) == preset:
                preset = cfg["preset"]
        elif isinstance(cfg.get("preset"), str) and cfg["preset"] in PRESETS:
            preset = cfg["preset"]
        else:
            raise InputError("the model config needs layers or a preset name")
        embed_dim, input_size = _bounded("embed_dim", cfg["embed_dim"]), _bounded("input_size", cfg["input_size"])
        frozen = cfg.get("frozen", False)
        if not isinstance(frozen, bool):
            raise InputError(f"frozen must be true or false, got {frozen!r}")
        net = cls(preset, embed_dim=embed_dim, input_size=input_size)
        if frozen:  # empty buffers of the stored tensors' shapes; load_state_dict fills them
            for m in net.modules():
                if isinstance(m, Derived):
                    m.freeze_layout()
        return net


class LipSimMetric(EmbeddingMetric):
    """A LipSimNet as an embedding metric. Input is shifted by ``mean`` (0.5: centred; LipSim's released
    models use 0), not scaled; certificates take the net's bound from its layers and the resize's exact
    norm for the caller's image size."""

    def __init__(
        self,
        net: LipSimNet,
        name: str = "lipsim",
        mean: float = 0.5,
        validate: bool = True,
        resizing: Resize | None = None,
    ) -> None:
        size = None if resizing is not None else net.input_size
        super().__init__(net, input_size=size, mean=mean, std=1.0, name=name, validate=validate, resizing=resizing)

    @property
    def lipschitz(self) -> float:  # type: ignore[override]
        """The network's bound, derived from its layers (see :meth:`LipSimNet.lipschitz_bound`)."""
        return self.net.certified_bound()

    @lipschitz.setter
    def lipschitz(self, value: float | None) -> None:  # the base class assigns it; the bound is derived
        pass
