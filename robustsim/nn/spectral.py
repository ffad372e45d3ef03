"""Exact operator norms of convolutions, for layers whose Lipschitz bound must be proven, not assumed.

A stride-1 convolution with circular padding on an n x n input is block-diagonalised by the 2-D DFT: its
l2 norm is the largest singular value of the kernel's transfer matrix K^(w) over the n x n frequency grid.
A zero-padded ("same") convolution on n x n is the restriction of the circular one on an m x m torus,
m = n + k - 1 (no wrap-around reaches the n x n window), so the same maximum over the m x m grid is a
rigorous upper bound of its norm, for every kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def transfer_singular_values(kernel: torch.Tensor, m: int) -> torch.Tensor:
    """(m * m,) largest singular value of the kernel's (out x in) transfer matrix at each frequency of an
    m x m grid (differentiable)."""
    k_h, k_w = kernel.shape[-2:]
    padded = F.pad(kernel, (0, m - k_w, 0, m - k_h))
    spectrum = torch.fft.fft2(padded)  # (out, in, m, m)
    return torch.linalg.matrix_norm(spectrum.permute(2, 3, 0, 1), ord=2).flatten()


def conv_operator_norm(kernel: torch.Tensor, n: int, circular: bool = False) -> torch.Tensor:
    """The l2 norm of the stride-1 'same' convolution by ``kernel`` on n x n inputs: exact for circular
    padding, a rigorous upper bound for zero padding (module docstring)."""
    m = n if circular else n + max(kernel.shape[-2:]) - 1
    return transfer_singular_values(kernel, m).max()


def matrix_norm(weight: torch.Tensor) -> torch.Tensor:
    """The exact l2 norm (largest singular value) of a matrix (differentiable)."""
    return torch.linalg.matrix_norm(weight, ord=2)


def abs_conv_norm(kernel: torch.Tensor) -> float:
    """The l2 norm of the convolution by |kernel| (entrywise absolute value), for every input size and zero or
    circular padding: at most the norm of the (out x in) matrix sum_taps |K_tap|, by Perron-Frobenius (every
    transfer matrix of a nonnegative kernel is dominated entrywise by the one at frequency 0). Float64."""
    k = kernel.detach().double().abs()
    return float(torch.linalg.matrix_norm(k.flatten(2).sum(-1), ord=2))


def conv_norm(kernel: torch.Tensor, hw: tuple[int, int], circular: bool = False) -> float:
    """:func:`conv_operator_norm` in float64 for an H x W input (a zero-padded H x W input is a restriction of the
    max(H, W) square one, so the bound at the larger side holds)."""
    return float(conv_operator_norm(kernel.detach().double(), max(int(hw[0]), int(hw[1])), circular=circular))
