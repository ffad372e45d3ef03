"""Stride-1 convolutions in float64 at BLAS speed on a CPU.

PyTorch computes a float64 convolution on a CPU with its generic im2col path (oneDNN has no float64 kernels),
about 10x the time of the float32 convolution. :func:`conv2d` computes the same sums as one matrix product per
kernel tap over the flattened padded images: with the images laid out as (C, B * Hp * Wp), the input of tap
(i, j) for every output position is the same matrix shifted by i * Wp + j columns, a view BLAS reads in place.
Each output entry is still the sum of the C k k products and the bias (:mod:`robustsim.nn.rounding`'s model
holds for any order of that sum), so a certificate's rounding bound covers it; columns that straddle a row or
image end are computed and dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _channels_first(x: torch.Tensor, p: int, mode: str) -> torch.Tensor:
    """(C, B, H + 2p, W + 2p): ``x`` padded, channels first (one copy of the images, the pad written in place)."""
    b, c, h, w = x.shape
    buf = x.new_empty(c, b, h + 2 * p, w + 2 * p)
    buf[:, :, p : p + h, p : p + w] = x.transpose(0, 1)
    if p and mode == "circular":
        buf[:, :, :p, p : p + w] = buf[:, :, h : h + p, p : p + w]
        buf[:, :, h + p :, p : p + w] = buf[:, :, p : 2 * p, p : p + w]
        buf[..., :p] = buf[..., w : w + p]
        buf[..., w + p :] = buf[..., p : 2 * p]
    elif p:
        for edge in (buf[:, :, :p], buf[:, :, h + p :], buf[..., :p], buf[..., w + p :]):
            edge.zero_()
    return buf


def _shifted(flat: torch.Tensor, hp: int, wp: int, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The convolution of the (C, B * hp * wp) padded images ``flat``: one matrix product per tap."""
    out_c, _, kh, kw = weight.shape
    size = hp * wp
    b = flat.shape[1] // size
    n = b * size - (kh - 1) * wp - (kw - 1)  # the columns every tap can read; every kept output lies below n
    start = weight.new_zeros(()) if bias is None else bias[:, None]
    acc = torch.addmm(start.expand(out_c, n), weight[:, :, 0, 0], flat[:, :n])
    for i in range(kh):
        for j in range(kw):
            if i or j:
                acc.addmm_(weight[:, :, i, j], flat[:, i * wp + j : i * wp + j + n])
    return acc.as_strided((b, out_c, hp - kh + 1, wp - kw + 1), (size, n, wp, 1))


def conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0, mode: str = "zeros"
) -> torch.Tensor:
    """F.conv2d (stride 1, dilation 1, one group) of ``x`` padded by ``padding`` on each side (``mode``: "zeros"
    or "circular"); float64 on a CPU through one matrix product per tap, everything else through F.conv2d."""
    if x.dtype != torch.float64 or x.device.type != "cpu":
        if mode == "circular" and padding:
            x, padding = F.pad(x, (padding,) * 4, mode="circular"), 0
        return F.conv2d(x, weight, bias, padding=padding)
    buf = _channels_first(x, padding, mode)
    return _shifted(buf.view(buf.shape[0], -1), buf.shape[2], buf.shape[3], weight, bias)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """F.conv_transpose2d (stride 1, one group): the convolution by the flipped, transposed kernel with padding
    k - 1 - ``padding`` (the same sums of products), through :func:`conv2d` in float64 on a CPU."""
    if x.dtype != torch.float64 or x.device.type != "cpu":
        return F.conv_transpose2d(x, weight, padding=padding)
    k = weight.shape[-1]
    return conv2d(x, weight.flip(-2, -1).transpose(0, 1), None, k - 1 - padding)
