"""Where a result came from: the fingerprint of a metric's weights and the versions of the packages that produced
it. Reports, bench cards and resume records cite these, so a saved number is only reused for the same metric."""

from __future__ import annotations

import hashlib
import importlib.metadata as md

import torch

from robustsim.metrics.base import Metric

PACKAGES = ("robustsim", "torch", "pyautoattack", "foolbox", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of the packages a report depends on ("not installed" where absent)."""
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def metric_fingerprint(metric: Metric) -> str:
    """A hash of the metric's name, class, dtype, decision procedure (adaptive decisions add a mark; plain ones keep
    the hash they had) and every byte of its weights and buffers."""
    adaptive = getattr(metric, "decisions", "plain") == "adaptive" and metric.dtype != torch.float64
    mark = "|adaptive" if adaptive else ""
    h = hashlib.sha256(f"{metric.name}|{type(metric).__qualname__}|{metric.dtype}{mark}".encode())
    for name, t in metric.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]
