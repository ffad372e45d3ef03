"""Sound upper bounds on the l2 norm of a plain convolution (any dimension, stride, dilation, groups, zero padding)
for the input size it runs at, from the kernel it applies. Three bounds, the smallest taken:

- **tap sum**: sum over taps of each tap's channel-matrix norm (valid for every input size);
- **disjoint windows** (stride >= the dilated kernel's extent, e.g. a patch embedding): every output reads its own
  input patch, so the map is block diagonal with the flattened kernel as each block (a border patch reads a
  sub-block): the flattened kernel's norm, exact whenever one full patch fits (then the only one computed);
- **Gram iteration on the frequency grid** (Delattre et al., ICML 2023): a zero-padded stride-1 convolution on n
  samples per axis is a restriction of the circular one on N = n + 2 pad (no output wraps around), a stride is a
  selection of outputs, so the norm is at most the largest singular value of the kernel's transfer matrices over
  the N-grid; each is bounded above by Gram iteration, sigma(A)^(2^t) = sigma(G_t) <= ||G_t||_F for
  G_{t+1} = G_t^H G_t (Frobenius rescaled at each step). Power iteration would be a lower estimate; this is not.

All in float64, times :data:`robustsim.nn.bounds.SAFE`.
"""

from __future__ import annotations

import math

import torch

from robustsim.nn.bounds import SAFE, one_thread

GRAM_STEPS = 6
#: the largest transfer tensor (frequencies x out x in) the Gram bound is computed for (64 MiB of complex128);
#: larger convolutions keep the tap sum
GRAM_ENTRIES = 2**22


def _per_group(kernel: torch.Tensor, groups: int) -> tuple[torch.Tensor, ...]:
    return kernel.detach().double().split(kernel.shape[0] // groups)


def tap_sum(kernel: torch.Tensor, groups: int = 1) -> float:
    """Sum over taps of the tap's (out x in) matrix norm, max over groups."""
    with one_thread():
        return max(float(torch.linalg.matrix_norm(g.flatten(2).permute(2, 0, 1), ord=2).sum()) for g in _per_group(
            kernel, groups)) * SAFE


def patch_norm(kernel: torch.Tensor, groups: int = 1) -> float:
    """The flattened kernel's norm (out x in * taps), max over groups: the exact norm of a convolution whose
    windows are disjoint."""
    with one_thread():
        return max(float(torch.linalg.matrix_norm(g.flatten(1), ord=2)) for g in _per_group(kernel, groups)) * SAFE


def dilate(kernel: torch.Tensor, dilation: tuple[int, ...]) -> torch.Tensor:
    """The kernel with ``dilation - 1`` zeros between taps (the same convolution at dilation 1)."""
    if all(d == 1 for d in dilation):
        return kernel
    size = [(k - 1) * d + 1 for k, d in zip(kernel.shape[2:], dilation, strict=True)]
    out = kernel.new_zeros(*kernel.shape[:2], *size)
    out[(slice(None), slice(None), *[slice(None, None, d) for d in dilation])] = kernel
    return out


def gram_bound(kernel: torch.Tensor, grid: tuple[int, ...], groups: int = 1, steps: int = GRAM_STEPS) -> float:
    """An upper bound on max over the ``grid`` frequencies of the transfer matrix's largest singular value (module
    docstring), max over groups; ``grid`` at least the kernel's size on every axis."""
    dims = tuple(range(2, kernel.dim()))
    best = 0.0
    with torch.no_grad(), one_thread():
        for g in _per_group(kernel, groups):
            spec = torch.fft.fftn(g, s=grid, dim=dims)  # (out, in, *grid)
            a = spec.flatten(2).permute(2, 0, 1)  # (freq, out, in)
            if a.shape[1] > a.shape[2]:
                a = a.mH  # the same singular values, smaller Gram matrices
            log_scale = torch.zeros(a.shape[0], dtype=torch.float64)
            for t in range(steps):
                f = torch.linalg.matrix_norm(a, ord="fro").clamp_min(1e-300)
                log_scale = log_scale + math.ldexp(1.0, -t) * f.log()
                a = a / f[:, None, None]
                a = a @ a.mH
            last = torch.linalg.matrix_norm(a, ord="fro").clamp_min(1e-300)
            bound = (log_scale + math.ldexp(1.0, -steps) * last.log()).exp().max()
            best = max(best, float(bound))
    return best * SAFE * (1 + 1e-9)


def conv_bound(
    kernel: torch.Tensor,
    in_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int = 1,
) -> float:
    """A sound bound on the l2 norm of the zero-padded convolution by ``kernel`` (out, in / groups, *k) on inputs of
    ``in_size`` (the smallest of the three in the module docstring)."""
    k = kernel.shape[2:]
    bound = tap_sum(kernel, groups)
    extent = [(kk - 1) * d + 1 for kk, d in zip(k, dilation, strict=True)]
    if all(s >= e for s, e in zip(stride, extent, strict=True)):
        return min(bound, patch_norm(kernel, groups))  # exact (whenever one full patch fits)
    grid = tuple(max(n + 2 * p, e) for n, p, e in zip(in_size, padding, extent, strict=True))
    if math.prod(grid) * kernel.shape[0] * kernel.shape[1] <= GRAM_ENTRIES:
        bound = min(bound, gram_bound(dilate(kernel.detach().double(), dilation), grid, groups))
    return bound
