"""Mixed precision for attack steps (``--precision``): the steps' forward and backward run under autocast, while
every clean decision, every re-check of a claimed break and every certificate stays in float32."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal, cast

import torch

from robustsim.errors import InputError
from robustsim.settings import PRECISIONS

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device | str) -> Precision:
    """``auto``: bf16 on a CUDA device that supports it, else fp32 (a CPU's bf16 is slower than its fp32)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise InputError("fp16 autocast needs a CUDA device; use --precision bf16 (or fp32) on a CPU")
    return cast(Precision, precision)


def check_precision(precision: object) -> Precision:
    """A resolved precision (fp32, bf16 or fp16; InputError otherwise: resolve ``auto`` with the device first)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise InputError(f"precision must be fp32, bf16 or fp16 (resolve auto first), got {precision!r}")
    return cast(Precision, precision)


def autocast(precision: Precision, device: torch.device | str) -> AbstractContextManager:
    """The context the attack steps run in: autocast to ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
