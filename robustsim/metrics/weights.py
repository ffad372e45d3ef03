"""Reading weight files: locating package data, checking an explicit path, loading a state dict without
unpickling code. Where manifest files live and how they are fetched is :mod:`robustsim.weights`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from robustsim.errors import WeightsError


def package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


def resolve_weights(name: str, explicit: str | os.PathLike | None, candidates: list[Path], hint: str) -> Path:
    """Return ``explicit`` if given (must exist) or the first existing candidate.

    Raises WeightsError naming the expected file(s) and how to provide them.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"{name}: weights file {path} does not exist; pass an existing file with weights=")
        return path
    for path in candidates:
        if path.is_file():
            return path
    expected = " or ".join(str(p) for p in candidates)
    raise WeightsError(f"{name}: no local weights; expected {expected}; {hint}")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch checkpoint without unpickling code (weights_only=True)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: dict = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or code-carrying pickle
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(
            f"cannot read weights {path}: {msg}; re-save it with torch.save(state_dict) or safetensors"
        ) from err
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"weights {path} hold a {type(sd).__name__}, not a state dict; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in sd.items()}
