"""One zoo entry as a declared row (timm's ``PretrainedCfg``, pyiqa's metric configs): name, builder (a
callable, or ``"module:attribute"`` imported only when the metric is built), the builder's options, the manifest
weight files its build opens, the optional packages it imports, its preprocessing, the figures its papers
report, and for an ensemble its member rows. "Can it run here" (:meth:`MetricEntry.state`) and "which files
does it need" (:meth:`MetricEntry.all_files`) derive from the row."""

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


@dataclass(frozen=True)
class MetricEntry:
    """One zoo entry (module docstring). ``local`` checks weights that are not manifest files (package data
    or a shipped folder); ``resizing`` is the preprocessing the builder is given (``resizing=``)."""

    name: str
    build: Callable[..., Metric] | str
    description: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    files: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    local: Callable[[], bool] | str | None = None
    resizing: Resize | None = None
    reported: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    members: tuple[MetricEntry, ...] = ()

    def builder(self) -> Callable[..., Metric]:
        return _resolve(self.build)

    def all_files(self) -> tuple[str, ...]:
        """Its own files and every member's, each once."""
        out = list(self.files)
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
        if self.members and "members" not in merged:
            merged["members"] = [m.make({k: v for k, v in options.items() if k != "validate"}) for m in self.members]
        metric = build(**merged)
        if not isinstance(metric, Metric):
            raise RobustsimError(f"the builder of metric {self.name!r} returned {type(metric).__name__}, not a Metric")
        return metric
