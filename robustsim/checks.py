"""The public boundary's argument checks: each raises :class:`~robustsim.errors.InputError` with one line that
names the argument, what it got and what it accepts. Public functions call these on entry, so a bad argument
never travels into the internals to fail there with a traceback (or, worse, to give a wrong answer). Importing
this module does not import torch (the CLI checks its options, and :mod:`robustsim.settings` its values, without
it)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from robustsim.errors import InputError

if TYPE_CHECKING:
    import torch


def count_arg(value: object, what: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    """An integer >= ``minimum`` (not a bool; None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " or None" if allow_none else ""
        raise InputError(f"{what} must be an integer >= {minimum}{none}, got {value!r}")
    return value


NAME_MAX, PATH_MAX = 255, 4095  # bytes of one name and of a whole path the kernel accepts (Linux, most file systems)


def user_path(value: object, what: str = "path") -> Path:
    """A path a user typed, as the file system will see it: ``~`` and ``~user`` expanded, not empty, no NUL, each
    name at most NAME_MAX bytes and the whole at most PATH_MAX (what ``open`` would refuse with an OSError is one
    line here, naming the option)."""
    from robustsim.text import visible

    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{what} must be a path, got {type(value).__name__}")
    text = os.fspath(value)
    text = text.decode(errors="surrogateescape") if isinstance(text, bytes) else text
    if not text:
        raise InputError(f"{what} is empty; name a file or folder")
    if "\0" in text:
        raise InputError(f"{what} {visible(text)[:80]!r} contains a NUL character; name a real path")
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):
            user = text[1:].split("/")[0]
            raise InputError(f"{what} {visible(text)[:80]}: there is no user {visible(user)[:40]!r} whose home "
                             "folder ~ could name; write the full path")  # fmt: skip
        text = expanded
    raw = os.fsencode(text)
    if len(raw) > PATH_MAX:
        raise InputError(f"{what} is {len(raw)} bytes long, over the {PATH_MAX} a path may have; choose a shorter one")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise InputError(
            f"{what} holds a name of {len(longest)} bytes ({visible(os.fsdecode(longest))[:24]}...), over the "
            f"{NAME_MAX} a file or folder name may have; choose a shorter one"
        )
    return Path(text)


def existing_path(value: str) -> Path | None:
    """``value`` as :func:`user_path` reads it when it names something on disk, else None (a name that cannot be a
    path, such as a zoo name of 300 bytes or ``~nosuchuser/x``, is simply not one)."""
    try:
        path = user_path(value)
        return path if path.exists() else None
    except (InputError, OSError):
        return None


def spec_arg(value: object, what: str = "spec", example: str = "mini") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} must be a spec string such as {example!r}, got {value!r}")
    return value


def numbers_arg(value: object, what: str) -> torch.Tensor:
    """A 1-D float tensor from a tensor or a sequence of finite numbers."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().reshape(-1).to(torch.float64)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise InputError(f"{what} must hold numbers, got {list(value)[:3]!r}...")
        t = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise InputError(f"{what} must be a tensor or a list of numbers, got {type(value).__name__}")
    if not torch.isfinite(t).all():
        raise InputError(f"{what} holds a non-finite value; distances and labels are finite numbers")
    return t


def probability_arg(value: object, what: str = "p") -> torch.Tensor:
    """Human preference fractions in [0, 1]."""
    t = numbers_arg(value, what)
    if len(t) and not (0 <= float(t.min()) and float(t.max()) <= 1):
        bad = next(float(v) for v in t if not 0 <= float(v) <= 1)
        raise InputError(f"{what} holds {bad:g}; it is the fraction of people preferring x1, in [0, 1]")
    return t


DEVICES = "cpu, cuda, cuda:N or auto"


def device_arg(value: object) -> torch.device:
    """A usable torch.device from ``cpu``, ``cuda``, ``cuda:N``, ``auto`` (a GPU when there is one) or a
    torch.device: the one device rule of the library and the CLI (``--device``)."""
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(value, (str, torch.device)):
        raise InputError(f"device must be one of {DEVICES} (or a torch.device), got {value!r}")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise InputError(f"{str(value)!r} is not a device; use {DEVICES}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {str(value)!r} is not supported; use {DEVICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine; use device 'cpu' (--device cpu)")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise InputError(f"{str(value)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
