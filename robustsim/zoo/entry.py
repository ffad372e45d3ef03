"""One zoo entry as a declared row (timm's ``PretrainedCfg`` and ``build_model_with_cfg``, pyiqa's metric
configs): name, builder (a callable, or ``"module:attribute"`` imported only when the metric is built), the
builder's options, its weight files, the optional packages it imports, its preprocessing, the figures its papers
report, and for an ensemble its member rows. A row names each weight file once: ``weights`` maps a builder
keyword to a manifest file (or to a {key: file} mapping), which :meth:`MetricEntry.make` resolves through the
weights manager and hands to the builder as a path, so a builder never names a file; ``hub_files`` are the files
an upstream package fetches itself (routed through the manager by :mod:`robustsim.weights.hub`). "Can it run
here" (:meth:`MetricEntry.state`) and "which files does it need" (:meth:`MetricEntry.all_files`) derive from the
row."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from robustsim.errors import RobustsimError
from robustsim.metrics.preprocess import Resize
from robustsim.weights import record, state

if TYPE_CHECKING:
    from robustsim.metrics.base import Metric


def _resolve(ref: Callable | str) -> Callable:
    """A callable, or the attribute ``"module:name"`` names (imported now)."""
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _resolved(spec: str | Mapping[str, str]):
    """The verified path of manifest file ``spec`` (fetched first when missing), or of each file of a mapping."""
    from robustsim import weights

    if isinstance(spec, Mapping):
        return {key: weights.resolve(name) for key, name in spec.items()}
    return weights.resolve(spec)


@dataclass(frozen=True)
class MetricEntry:
    """One zoo entry (module docstring). ``local`` checks weights that are not manifest files (package data
    or a shipped folder); ``resizing`` is the preprocessing the builder is given (``resizing=``)."""

    name: str
    build: Callable[..., Metric] | str
    description: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    weights: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    hub_files: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    local: Callable[[], bool] | str | None = None
    resizing: Resize | None = None
    reported: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    members: tuple[MetricEntry, ...] = ()

    def builder(self) -> Callable[..., Metric]:
        return _resolve(self.build)

    def files(self) -> tuple[str, ...]:
        """The row's own weight files (``weights`` and ``hub_files``), each once."""
        out: list[str] = []
        for spec in self.weights.values():
            out += list(spec.values()) if isinstance(spec, Mapping) else [spec]
        return tuple(dict.fromkeys([*out, *self.hub_files]))

    def all_files(self) -> tuple[str, ...]:
        """Its own files and every member's, each once."""
        out = list(self.files())
        for m in self.members:
            out += m.all_files()
        return tuple(dict.fromkeys(out))

    def all_packages(self) -> tuple[str, ...]:
        out = list(self.packages)
        for m in self.members:
            out += m.all_packages()
        return tuple(dict.fromkeys(out))

    def missing_packages(self) -> list[str]:
        return [p for p in self.all_packages() if importlib.util.find_spec(p) is None]

    def _local(self) -> bool:
        own = self.local is None or bool(_resolve(self.local)())
        return own and all(m._local() for m in self.members)

    def state(self) -> str:
        """``built-in`` (nothing to fetch), ``fetched``, ``not downloaded`` (downloaded on first use, which needs
        the network), ``missing`` (offline or no download location: ``robustsim weights add``), ``corrupt``, or
        ``needs <package>``."""
        missing = self.missing_packages()
        if missing:
            return f"needs {missing[0]}"
        files = self.all_files()
        if not files:
            return "built-in" if self._local() else "missing"
        states = {state(record(f)) for f in files}
        for s in ("corrupt", "missing", "not downloaded"):
            if s in states:
                return s
        return "fetched" if self._local() else "missing"

    def weights_available(self) -> bool:
        """True when the metric can be built here without a download."""
        return self.state() in ("built-in", "fetched")

    def make(self, options: Mapping[str, Any]) -> Metric:
        """Build the metric with the row's options, overridden by ``options`` (each checked against the
        builder's signature)."""
        from robustsim.metrics.base import Metric

        build = self.builder()
        merged = {**self.options, **options}
        if self.resizing is not None and "resizing" not in merged:  # the upstream's, at the size asked for
            size = merged.get("input_size")
            merged["resizing"] = self.resizing if size is None else self.resizing.at(int(size))
        params = inspect.signature(build).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(options) - set(params))
            if unknown:
                allowed = [p for p in params if p not in {"name", "arch", "variant", "net", "resizing", "members"}]
                raise RobustsimError(
                    f"metric {self.name!r} has no option {unknown[0]!r}; its options: {', '.join(allowed) or 'none'}"
                )
        missing = self.missing_packages()
        if missing:  # before any weight file is fetched: the one line naming the pip extra
            from robustsim.compat import import_optional

            import_optional(missing[0])
        if merged.get("pretrained", True):  # the row's weight files, as paths (a caller's own path wins)
            for key, spec in self.weights.items():
                if merged.get(key) is None:
                    merged[key] = _resolved(spec)
        if self.members and "members" not in merged:
            merged["members"] = [m.make({k: v for k, v in options.items() if k != "validate"}) for m in self.members]
        metric = build(**merged)
        if not isinstance(metric, Metric):
            raise RobustsimError(f"the builder of metric {self.name!r} returned {type(metric).__name__}, not a Metric")
        return metric
