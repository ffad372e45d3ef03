"""Student-view augmentation: per-sample random resized crop, flip and mild photometric jitter.

Parameters are drawn for the whole global batch from a generator seeded by (seed, step), so a
sample gets the same view whichever process (``torchrun``) or resumed run computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, salt)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))


def augment(
    x: torch.Tensor, gen: torch.Generator, rows: slice, total: int, scale: tuple[float, float] = (0.7, 1.0)
) -> torch.Tensor:
    """Augment ``x`` = rows ``rows`` of a global batch of ``total`` images; output stays in [0, 1]."""
    area = torch.empty(total).uniform_(*scale, generator=gen)
    side = area.sqrt()
    tx = (torch.rand(total, generator=gen) * 2 - 1) * (1 - side)
    ty = (torch.rand(total, generator=gen) * 2 - 1) * (1 - side)
    flip = torch.where(torch.rand(total, generator=gen) < 0.5, -1.0, 1.0)
    bright = torch.empty(total).uniform_(-0.1, 0.1, generator=gen)
    contrast = torch.empty(total).uniform_(0.8, 1.2, generator=gen)
    side, tx, ty, flip, bright, contrast = (t[rows].to(x) for t in (side, tx, ty, flip, bright, contrast))
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(-1, 1, 1, 1) + mean + bright.view(-1, 1, 1, 1)
    return out.clamp(0, 1)
