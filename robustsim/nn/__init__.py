"""1-Lipschitz layers (l2): SLL residual layers, orthogonal layers, padding, pooling, activations."""

from robustsim.nn.layers import GroupSort2, LipPool, OrthoConv2d, OrthoLinear, PaddingChannels, Projection
from robustsim.nn.sll import SLLConv2d, SLLLinear

__all__ = [
    "GroupSort2",
    "LipPool",
    "OrthoConv2d",
    "OrthoLinear",
    "PaddingChannels",
    "Projection",
    "SLLConv2d",
    "SLLLinear",
]
