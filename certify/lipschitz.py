"""Lipschitz constants: the bound a model's structure guarantees, and an empirical lower estimate."""

from __future__ import annotations

import torch
from torch import nn

from robustsim.errors import RobustsimError

#: parameter-free modules that are 1-Lipschitz in l2 (elementwise 1-Lipschitz or reshapes)
ONE_LIPSCHITZ = (nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.LeakyReLU, nn.Tanh, nn.Dropout)


def lipschitz_bound(module: nn.Module) -> float:
    """The l2 Lipschitz constant guaranteed by the structure: a module's own ``lipschitz_bound``,
    else the product over an ``nn.Sequential``'s children, else 1 for parameter-free 1-Lipschitz
    modules. Raises RobustsimError for a module with no guarantee (assumption: composition only).
    """
    own = getattr(module, "lipschitz_bound", None)
    if isinstance(own, (int, float)):
        return float(own)
    if isinstance(module, nn.Sequential):
        bound = 1.0
        for child in module:
            bound *= lipschitz_bound(child)
        return bound
    if isinstance(module, ONE_LIPSCHITZ):
        return 1.0
    raise RobustsimError(
        f"{type(module).__name__} has no Lipschitz guarantee; build the model from robustsim.nn layers "
        "or set a proven `lipschitz_bound` attribute on it"
    )


def estimate_lipschitz(
    f: nn.Module, x: torch.Tensor, power_steps: int = 50, ascent_steps: int = 100, radius: float = 0.05, seed: int = 0
) -> float:
    """Empirical lower estimate of f's l2 Lipschitz constant around the batch ``x``.

    Max of (a) power iteration on J^T J at every point of ``x`` (spectral norm of the local
    Jacobian) and (b) gradient ascent of ||f(a) - f(b)|| / ||a - b|| over pairs starting near ``x``.
    A true constant L is never exceeded by this estimate (up to float error).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    was_training = f.training
    grads = [(p, p.requires_grad) for p in f.parameters()]
    f.eval()
    for p, _ in grads:  # input gradients only: lets eval-mode weight caches (SLL rescaling) apply
        p.requires_grad_(False)
    try:
        x = x.detach()
        best = 0.0
        # (a) power iteration per sample, batched: v <- J^T J v (rows of f depend on rows of x only)
        shape = (-1, *[1] * (x.dim() - 1))
        v = torch.randn(x.shape, generator=g).to(x)
        for _ in range(power_steps):
            v = v / v.flatten(1).norm(dim=1).view(shape).clamp_min(1e-12)
            _, jv = torch.autograd.functional.jvp(f, x, v)
            _, v = torch.autograd.functional.vjp(f, x, jv)
        v = v / v.flatten(1).norm(dim=1).view(shape).clamp_min(1e-12)
        _, jv = torch.autograd.functional.jvp(f, x, v)
        best = max(best, float(jv.flatten(1).norm(dim=1).max()))
        # (b) pair ascent
        a = x.clone().requires_grad_(True)
        b = (x + radius * torch.randn(x.shape, generator=g).to(x)).requires_grad_(True)
        opt = torch.optim.Adam([a, b], lr=radius / 10)
        for _ in range(ascent_steps):
            num = (f(a) - f(b)).flatten(1).norm(dim=1)
            den = (a - b).flatten(1).norm(dim=1).clamp_min(1e-9)
            ratio = num / den
            best = max(best, float(ratio.detach().max()))
            opt.zero_grad()
            (-ratio.sum()).backward()
            opt.step()
        return best
    finally:
        f.train(was_training)
        for p, flag in grads:
            p.requires_grad_(flag)
