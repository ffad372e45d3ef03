"""Reading weight files: locating package data, checking an explicit path, loading a state dict without
unpickling code. Where manifest files live and how they are fetched is :mod:`robustsim.weights`."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch

from robustsim.checks import user_path
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
        path = user_path(explicit, "weights=")
        if not path.is_file():
            raise WeightsError(f"{name}: weights file {path} does not exist; pass an existing file with weights=")
        return path
    for path in candidates:
        if path.is_file():
            return path
    expected = " or ".join(str(p) for p in candidates)
    raise WeightsError(f"{name}: no local weights; expected {expected}; {hint}")


def numpy_scalar_globals() -> list:
    """The only globals beyond torch's weights-only set that a training checkpoint needs: a numpy scalar
    (an optimizer's learning rate set from ``np.interp``, as LipSim's ``TriangularLRScheduler`` does) pickles
    as ``numpy.core.multiarray.scalar`` (numpy 1) or ``numpy._core.multiarray.scalar`` (numpy 2) applied to a
    ``numpy.dtype`` (whose instance is a ``numpy.dtypes.Float64DType`` in numpy >= 1.25): a float64 built from
    a dtype and raw bytes. Nothing else is allowed."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    found = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    if hasattr(np, "dtypes"):
        found.append(np.dtypes.Float64DType)
    return found


def read_checkpoint(path: str | os.PathLike) -> object:
    """What a safetensors or torch file holds, unpickling no code: torch's weights-only loader with
    :func:`numpy_scalar_globals` allowed. WeightsError (one line, naming the refused global) otherwise."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals(numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or code-carrying pickle
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)|but got <class '([^']+)'>", text)
        if found:
            msg = f"it holds {found.group(1) or found.group(2)}, which a weights-only load does not build"
        else:
            msg = text.splitlines()[0] if text else type(err).__name__
        raise WeightsError(
            f"cannot read weights {path}: {msg}; re-save it with torch.save(state_dict) or safetensors"
        ) from None


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a safetensors or torch file (a training checkpoint's model state), read without
    unpickling code (:func:`read_checkpoint`)."""
    path = Path(path)
    sd = read_checkpoint(path)
    for key in ("model_state_dict", "state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"weights {path} hold a {type(sd).__name__}, not a state dict; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in sd.items()}
