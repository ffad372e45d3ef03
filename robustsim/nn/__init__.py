"""1-Lipschitz layers (l2): SLL residual layers, orthogonal layers, padding, pooling, activations.

``LAYERS`` maps a layer kind to its (conv, linear) constructors, ``conv(channels, inner)`` and
``linear(features, inner)``: what ``LipSimNet``'s ``layer`` field picks.
"""

from robustsim.nn.layers import GroupSort2, LipPool, OrthoConv2d, OrthoLinear, PaddingChannels, Projection, Truncate
from robustsim.nn.sll import SLLConv2d, SLLLinear

LAYERS = {
    "sll": (lambda c, inner: SLLConv2d(c, inner), lambda f, inner: SLLLinear(f, inner)),
}

__all__ = [
    "LAYERS",
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
