"""1-Lipschitz layers (l2): SLL residual layers, orthogonal layers, padding, pooling, activations.

``LAYERS`` maps a layer kind to its (conv, linear) constructors, ``conv(channels, inner)`` and
``linear(features, inner)``: what ``LipSimNet``'s ``layer`` field picks. ``sll`` (Araujo et al. 2023) and
``cpl`` (Meunier et al. 2022) are residual layers with an inner width; ``aol`` (Prach & Lampert 2022) and
``aoc`` (orthogonium's orthogonal convolutions, QR-orthogonal linear maps) are plain layers followed by
MaxMin (``inner`` unused).
"""

from torch import nn

from robustsim.errors import InputError
from robustsim.nn.aol import AOLConv2d, AOLLinear
from robustsim.nn.cpl import CPLConv2d, CPLLinear
from robustsim.nn.layers import (
    GroupSort2,
    LipPool,
    OrthoConv2d,
    OrthoConvBlock,
    OrthoLinear,
    PaddingChannels,
    Projection,
    Truncate,
)
from robustsim.nn.sll import SLLConv2d, SLLLinear


def _even(n: int, kind: str) -> int:
    if n % 2:
        raise InputError(f"{kind} layers end in MaxMin on channel pairs: {n} channels must be even")
    return n


LAYERS = {
    "sll": (lambda c, inner: SLLConv2d(c, inner), lambda f, inner: SLLLinear(f, inner)),
    "aol": (
        lambda c, inner: nn.Sequential(AOLConv2d(_even(c, "aol")), GroupSort2()),
        lambda f, inner: nn.Sequential(AOLLinear(_even(f, "aol")), GroupSort2()),
    ),
    "cpl": (lambda c, inner: CPLConv2d(c, inner), lambda f, inner: CPLLinear(f, inner)),
    "aoc": (
        lambda c, inner: OrthoConvBlock(_even(c, "aoc")),
        lambda f, inner: nn.Sequential(Projection(_even(f, "aoc"), f, bias=True), GroupSort2()),
    ),
}



def layer_kind(value: object) -> str:
    """A layer kind of :data:`LAYERS` (InputError naming them otherwise): the one check of this rule."""
    if not isinstance(value, str) or value not in LAYERS:
        raise InputError(f"layer must be one of {', '.join(LAYERS)}, got {value!r}")
    return value


__all__ = [
    "LAYERS",
    "layer_kind",
    "AOLConv2d",
    "AOLLinear",
    "CPLConv2d",
    "CPLLinear",
    "OrthoConvBlock",
    "GroupSort2",
    "LipPool",
    "OrthoConv2d",
    "OrthoLinear",
    "PaddingChannels",
    "Projection",
    "SLLConv2d",
    "SLLLinear",
    "Truncate",
]
