"""Layers that apply a tensor derived from their weights (SLL's folded kernel, AOL's rescaled weight, CPL's
scale, a projection's orthonormal matrix, an orthogonal convolution's kernel): :meth:`Derived.applied`.

- training, or a weight gradient needed: the tensor is computed anew (differentiable);
- eval: computed once and memoised while the weights are unchanged (keyed on each weight's identity,
  version counter, storage, device and dtype: an optimizer step, ``load_state_dict``, an in-place edit,
  ``.to()`` or ``.train()`` all invalidate it);
- frozen (:meth:`Derived.freeze`): a buffer of the state dict, applied in every mode. The layer is then one
  fixed function: the same input gives the same bits whatever was called before, and a saved frozen layer
  loads as exactly that function (no iteration, QR or power step re-runs at load). Metrics loaded from
  checkpoints are frozen; :meth:`Derived.thaw` makes a layer trainable again.
"""

from __future__ import annotations

import torch
from torch import nn

FROZEN = "derived"  # the buffer's name in the state dict


class Derived(nn.Module):
    """Mixin: subclasses implement :meth:`_derive`; forwards call :meth:`applied`."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _derive(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _key_tensors(self) -> list[torch.Tensor]:
        """The weights the derived tensor is computed from (all parameters by default)."""
        return list(self.parameters())

    def _derived_shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def frozen(self) -> bool:
        return FROZEN in self._buffers

    def applied(self) -> torch.Tensor:
        """The tensor the forward applies (module docstring: computed, memoised or frozen)."""
        if self.frozen:
            return self._buffers[FROZEN]
        keys = self._key_tensors()
        if self.training or (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            self._cache = None
            return self._derive()
        key = tuple((id(p), p._version, p.data_ptr(), p.device, p.dtype) for p in keys)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._derive())
        return self._cache[1]

    def freeze(self) -> None:
        """Store the applied tensor (computed once now, in eval arithmetic) as a contiguous buffer, the layout
        ``load_state_dict`` gives it: the in-memory and the reloaded layer run the same kernels; idempotent."""
        if self.frozen:
            return
        was = self.training
        self.eval()
        with torch.no_grad():
            value = self._derive().detach().clone(memory_format=torch.contiguous_format)
        self.train(was)
        self.register_buffer(FROZEN, value)
        self._cache = None

    def freeze_layout(self) -> None:
        """An empty frozen buffer of the right shape, for ``load_state_dict`` of a frozen checkpoint."""
        ref = next(iter(self.parameters()))
        self.register_buffer(FROZEN, torch.empty(self._derived_shape(), dtype=ref.dtype, device=ref.device))

    def thaw(self) -> None:
        """Drop the frozen buffer: the tensor is derived from the weights again (for training)."""
        self._buffers.pop(FROZEN, None)
        self._cache = None

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(): drop the memo
        self._cache = None
        return super()._apply(fn, *args, **kwargs)


def freeze(module: nn.Module) -> nn.Module:
    """Freeze every :class:`Derived` layer inside ``module`` (in place); returns it."""
    for m in module.modules():
        if isinstance(m, Derived):
            m.freeze()
    return module


def thaw(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, Derived):
            m.thaw()
    return module


def is_frozen(module: nn.Module) -> bool:
    """True when every :class:`Derived` layer inside ``module`` is frozen (and there is at least one)."""
    layers = [m for m in module.modules() if isinstance(m, Derived)]
    return bool(layers) and all(m.frozen for m in layers)
