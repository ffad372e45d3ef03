"""Eval-mode caching of weight-derived tensors that can never go stale.

A cached value is keyed on every parameter's identity, version counter, storage, device and dtype:
an optimizer step, ``load_state_dict``, an in-place edit, ``.to()`` or ``.train()`` all invalidate
it. The cache is bypassed in training mode and whenever a weight gradient is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class EvalCache(nn.Module):
    """Mixin: ``self._cached(compute)`` returns ``compute()``, memoised while the weights are unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _cached(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        params = list(self.parameters())
        if self.training or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            self._cache = None
            return compute()
        key = tuple((id(p), p._version, p.data_ptr(), p.device, p.dtype) for p in params)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, compute())
        return self._cache[1]

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(): drop the cache
        self._cache = None
        return super()._apply(fn, *args, **kwargs)
