"""The metric zoo's machinery: ``load_metric``, ``list_metrics``, ``register_metric``.

Every zoo entry is one declared row (:class:`~robustsim.zoo.entry.MetricEntry`); the built-in rows are the table
in :mod:`robustsim.zoo.rows`, and the metrics that ship with robustsim are the folders beside them
(``robustsim/zoo/<name>/``). Every reader derives from the rows: "can it run here" (``entry.state()``), "which
files does it need" (:func:`files_of`: what ``robustsim weights fetch <metric>`` fetches, what ``robustsim weights
list`` shows), the figures bench cards show beside ours.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from robustsim.checks import existing_path
from robustsim.errors import InputError, RobustsimError
from robustsim.metrics.base import Metric
from robustsim.models.checkpoint import load_checkpoint_metric
from robustsim.zoo.entry import MetricEntry
from robustsim.zoo.names import shipped_checkpoints, unknown_metric
from robustsim.zoo.rows import BUILTIN

_REGISTRY: dict[str, MetricEntry] = {}
_CHECKPOINT_LOADERS: list[Callable[[Path], Metric | None]] = []
_BUILTINS_LOADED = False


def add_entry(entry: MetricEntry) -> None:
    """Add (or replace) a zoo row."""
    _REGISTRY[entry.name] = entry


def register_metric(
    name: str,
    build: Callable[..., Metric],
    description: str = "",
    weights_available: Callable[[], bool] | None = None,
    files: tuple[str, ...] = (),
    packages: tuple[str, ...] = (),
    *,
    options: Mapping[str, Any] | None = None,
    reported: Mapping[str, Any] | None = None,
) -> None:
    """Add a named metric: ``build(**options)`` must return a Metric. ``files`` are manifest weight files it
    opens, ``packages`` the optional modules it imports, ``weights_available`` checks local weights that are
    not in the manifest, ``reported`` holds published figures shown on bench cards."""
    if not isinstance(name, str) or not name.strip() or any(ord(c) < 32 or c in "+/\\" for c in name):
        raise InputError(f"metric name must be a non-empty string without control characters, '+' or '/', got {name!r}")
    if not callable(build):
        raise InputError(f"metric {name!r}: build must be a callable returning a Metric, got {build!r}")
    if weights_available is not None and not callable(weights_available):
        raise InputError(f"metric {name!r}: weights_available must be callable, got {weights_available!r}")
    for what, value in (("files", files), ("packages", packages)):
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise InputError(f"metric {name!r}: {what} must be a tuple of names, got {value!r}")
    _ensure_builtins()
    add_entry(
        MetricEntry(
            name,
            build,
            str(description),
            options=MappingProxyType(dict(options or {})),
            hub_files=tuple(files),  # files the build opens itself (not handed to it as paths)
            packages=tuple(packages),
            local=weights_available,
            reported=MappingProxyType(dict(reported or {})),
        )
    )


def register_checkpoint_loader(loader: Callable[[Path], Metric | None]) -> None:
    """Add a loader tried on paths; it returns a Metric or None when the path is not its format."""
    _CHECKPOINT_LOADERS.append(loader)


def list_metrics() -> list[str]:
    """Names accepted by :func:`load_metric` (paths to checkpoints and ``a+b`` ensembles also work)."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def metric_entries() -> list[MetricEntry]:
    _ensure_builtins()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def metric_entry(name: str) -> MetricEntry:
    """The zoo row of ``name`` (RobustsimError naming the closest names when unknown)."""
    _ensure_builtins()
    if name not in _REGISTRY:
        raise unknown_metric(name, _REGISTRY, paths=False)
    return _REGISTRY[name]


def files_of(name: str) -> tuple[str, ...]:
    """Every manifest weight file zoo metric ``name`` opens (an ``a+b`` ensemble: its members')."""
    return tuple(dict.fromkeys(f for part in name.split("+") for f in metric_entry(part).all_files()))


def metrics_using(file: str) -> list[str]:
    """The zoo metrics whose build opens weight file ``file``."""
    return [e.name for e in metric_entries() if file in e.all_files()]


def load_metric(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    **options: Any,
) -> Metric:
    """Build a metric by zoo name, ``a+b+c`` ensemble name, or path to a robustsim checkpoint.

    The metric is returned in eval mode on ``device`` (default CPU), computing in ``dtype`` (default float32;
    ``torch.float64`` or ``"float64"`` deploys it in double precision: a frozen network then applies exactly the
    tensors its float32 twin applies, the same exact function, and its certificates lose almost nothing to
    rounding; ``"adaptive"`` computes in float32 and takes each 2AFC decision float32 cannot resolve from the
    float64 twin: the exact decisions, certified as the float64 deployment, at about float32's cost. The shipped
    certified metrics deploy adaptively by default; ``dtype="float32"`` gives plain float32 decisions).
    Raises RobustsimError for an unknown name, an unsupported option, a bad device or dtype, or missing local
    weights.
    """
    _ensure_builtins()
    dtype = _checked_dtype(dtype)
    if not isinstance(name_or_path, (str, Path)):
        raise InputError(f"metric must be a zoo name or a checkpoint path, got {type(name_or_path).__name__}")
    device = _checked_device(device)
    key = str(name_or_path)
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise RobustsimError(f"metric name {key!r} contains a control character; pass a zoo name or a path")
    if key in _REGISTRY:
        metric = _REGISTRY[key].make(options)
    elif "+" in key and all(part in _REGISTRY for part in key.split("+")):
        from robustsim.metrics.ensemble import EnsembleMetric

        metric = EnsembleMetric([_REGISTRY[p].make(options) for p in key.split("+")], name=key)
    elif (path := existing_path(key)) is not None:
        metric = _load_path(path)
    else:
        raise unknown_metric(key, _REGISTRY)
    metric.eval()
    if dtype is not None:
        metric = deploy(metric.to(torch.float32 if dtype == "adaptive" else dtype), dtype)
    return metric.to(device) if device is not None else metric


#: how a metric can be deployed: its arithmetic, and "adaptive" (float32, with the exact decision from its
#: float64 twin where float32 cannot resolve it: robustsim.certify.adaptive)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "adaptive": "adaptive"}


def deploy(metric: Metric, dtype: torch.dtype | str) -> Metric:
    """``metric`` (already cast) marked with how it decides: adaptively for "adaptive", plainly otherwise."""
    if hasattr(metric, "decisions"):
        metric.decisions = "adaptive" if dtype == "adaptive" else "plain"
    return metric


def _checked_dtype(dtype: object) -> torch.dtype | str | None:
    """None, torch.float32, torch.float64 or "adaptive" (InputError naming the accepted forms otherwise)."""
    if dtype is None:
        return None
    for value in DTYPES.values():
        if dtype is value or (isinstance(dtype, str) and dtype == value):
            return value
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InputError(f"dtype must be float32, float64 or adaptive (a string or a torch dtype), got {dtype!r}")


def _checked_device(device: object) -> torch.device | None:
    """None, or a usable torch.device (:func:`robustsim.checks.device_arg`)."""
    from robustsim.checks import device_arg

    return None if device is None else device_arg(device)


def _load_path(path: Path) -> Metric:
    for loader in _CHECKPOINT_LOADERS:
        metric = loader(path)
        if metric is not None:
            return metric
    raise RobustsimError(
        f"{path} is not a robustsim checkpoint (expected a folder with config.json and model.safetensors)"
    )


def _shipped_summary(folder: Path) -> str:
    try:
        return str(json.loads((folder / "card.json").read_text())["summary"])
    except (OSError, ValueError, KeyError):
        return "certified 1-Lipschitz LipSim, shipped with robustsim"


def load_shipped(folder: str, validate: bool = True) -> Metric:
    """A metric that ships in ``robustsim/zoo/`` (frozen: one fixed function), whose Lipschitz bound is its card's
    (rounded up from the derived one when the card was made: the same number on every CPU)."""
    metric = load_checkpoint_metric(Path(folder))
    assert metric is not None
    metric.name, metric.validate = Path(folder).name, validate
    card = json.loads((Path(folder) / "card.json").read_text())
    metric.net.stated_bound = float(card["lipschitz_bound"])
    metric.decisions = "adaptive"  # certified: float32 decisions, exact ones (float64) where float32 is unsure
    return metric


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        register_checkpoint_loader(load_checkpoint_metric)
        for folder in shipped_checkpoints():
            weights = folder / "model.safetensors"
            add_entry(
                MetricEntry(
                    folder.name,
                    load_shipped,
                    _shipped_summary(folder),
                    MappingProxyType({"folder": str(folder)}),
                    local=weights.is_file,
                )
            )
        for entry in BUILTIN:
            add_entry(entry)
