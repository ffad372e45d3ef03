"""The zoo rows reproduce their upstreams: each network's preprocessing is the upstream's own transform
(built here from the upstream code's objects or its source lines), the certificate's resize norm is the norm of
the operator actually applied, R-CLIP's released vision-tower files load as fra31/perceptual-metrics loads them,
DreamSim's untuned ensemble is the dreamsim package's model without adapters, and bench cards carry each paper's
figures for the paper's own protocol."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import robustsim
from robustsim.compat import import_optional
from robustsim.zoo import metric_entries

SIZES = [(180, 300), (300, 180), (224, 224), (64, 64)]


def _tv():
    import_optional("torchvision")
    from torchvision import transforms

    return transforms


def _open_clip_eval(size: int, crop: int | None = None):
    """open_clip's own eval transform (open_clip/transform.py ``image_transform``) minus its PIL steps;
    ``crop``: R-CLIP's ConvNeXt, whose eval (fra31/perceptual-metrics utils_perceptual_models.py,
    ``get_model_and_transforms``) replaces transforms[1] by CenterCrop(224)."""
    open_clip = import_optional("open_clip")
    t = open_clip.image_transform(size, is_train=False)
    if crop is not None:
        t.transforms[1] = _tv().CenterCrop(crop)
    return _tv().Compose(t.transforms[:2])  # Resize, CenterCrop (then RGB, ToTensor, Normalize)


def _dino_eval():
    """DINO's eval_linear.py: Resize(256, interpolation=3), CenterCrop(224)."""
    tv = _tv()
    return tv.Compose([tv.Resize(256, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(224)])


def _squash_bicubic():
    """dreamsim/model.py ``dreamsim()``'s preprocess and lipsim/core/utils.py ``get_preprocess_fn('DEFAULT')``:
    Resize((224, 224), interpolation=BICUBIC)."""
    tv = _tv()
    return tv.Resize((224, 224), interpolation=tv.InterpolationMode.BICUBIC)


UPSTREAM = {
    "clip-vitb16": lambda: _open_clip_eval(224),
    "openclip-vitb16": lambda: _open_clip_eval(224),
    "r-clip-t-vitb16": lambda: _open_clip_eval(224),
    "r-clip-f-vitb16": lambda: _open_clip_eval(224),
    "r-clip-t-convnext": lambda: _open_clip_eval(256, crop=224),
    "r-clip-f-convnext": lambda: _open_clip_eval(256, crop=224),
    "dino-vitb16": _dino_eval,
    # R-CLIP + LoRA: "DreamSim doesn't use OpenCLIP preprocessing" (utils_perceptual_models.get_model_and_transforms)
    "r-clip-t-convnext-lora": _squash_bicubic,
    "r-clip-f-convnext-lora": _squash_bicubic,
    **{n: _squash_bicubic for n in ("dreamsim", "dreamsim-base", "dreamsim-dino-vitb16", "dreamsim-clip-vitb32")},
    **{n: _squash_bicubic for n in ("dreamsim-open-clip-vitb32", "lipsim-small-pretrained")},
    **{n: _squash_bicubic for n in ("lipsim-small-m0.2", "lipsim-small-m0.5")},
}


@pytest.mark.parametrize("entry", [e for e in metric_entries() if e.resizing is not None], ids=lambda e: e.name)
def test_every_rows_preprocessing_is_its_upstreams_transform(entry):
    """Our resize of a [0, 1] tensor equals the upstream transform applied to the same tensor (torchvision's tensor
    path: antialiased, as PIL's resize is), at sizes that squash, crop, and upsample."""
    assert entry.name in UPSTREAM, f"{entry.name}: name the upstream transform its resizing reproduces"
    upstream = UPSTREAM[entry.name]()
    g = torch.Generator().manual_seed(0)
    for hw in SIZES:
        x = torch.rand(2, 3, *hw, generator=g)
        theirs, ours = upstream(x), entry.resizing(x)
        assert ours.shape == theirs.shape, (hw, ours.shape, theirs.shape)
        assert torch.allclose(ours, theirs, atol=1e-5), (hw, float((ours - theirs).abs().max()))


@pytest.mark.parametrize("hw", [(24, 30), (30, 24), (20, 20), (12, 12)])
@pytest.mark.parametrize("kind", ["dino", "open_clip", "squash"])
def test_the_resize_norm_is_the_norm_of_the_operator_applied(kind, hw):
    """The certificate multiplies by ||resize||: computed from the separable axis matrices, it equals the spectral
    norm of the operator's full matrix, read off by resizing every basis image (small sizes keep it exact)."""
    from robustsim.metrics.preprocess import Resize, resize_norm

    resize = {
        "dino": Resize(16, "bicubic", antialias=True, crop=True, scale_size=19),
        "open_clip": Resize(16, "bicubic", antialias=True, crop=True),
        "squash": Resize(16, "bicubic", antialias=True),
    }[kind]
    n = hw[0] * hw[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *hw)
    matrix = resize(basis).reshape(n, -1).T  # (out pixels, in pixels)
    exact = float(torch.linalg.matrix_norm(matrix, ord=2))
    assert exact <= resize_norm(resize, hw) <= exact * (1 + 1e-6)


TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
TINY_VIT = {"image_size": 224, "layers": 2, "width": 32, "patch_size": 32, "head_width": 16}
TINY_CONVNEXT = {  # a timm ConvNeXt tower, as R-CLIP's convnext_base_w is, at a test's size
    "timm_model_name": "convnext_atto",
    "timm_model_pretrained": False,
    "timm_pool": "",
    "timm_proj": "linear",
    "image_size": 64,
}


def _tiny_open_clip(tmp_path, name: str = "robustsim-tiny-vit", vision: dict = TINY_VIT):
    """A small config registered with open_clip (its own config loader), so a real open_clip model is built."""
    open_clip = import_optional("open_clip")
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"embed_dim": 16, "vision_cfg": vision, "text_cfg": TINY_TEXT}))
    open_clip.add_model_config(str(path))
    return open_clip, name


def test_r_clip_vision_tower_files_load_as_their_eval_loads_them(tmp_path):
    """fra31/perceptual-metrics: ``model.visual.load_state_dict(torch.load(ckpt))`` into ``create_model(arch,
    pretrained=None)`` (utils_perceptual_models.py), inputs normalised by OpenAI's mean/std (eval.py), the
    embedding ``model.visual(normalize(x))`` compared by cosine similarity (utils_perceptual_eval.py). A file in
    that layout, random weights: our row's metric gives their distance; a whole-model file is refused in one line."""
    open_clip, arch = _tiny_open_clip(tmp_path)
    torch.manual_seed(0)
    theirs = open_clip.create_model(arch, pretrained=None).eval()
    for p in theirs.visual.parameters():
        p.data.normal_(0, 0.05)
    torch.save(theirs.visual.state_dict(), tmp_path / "vit-b-16-tecoa-eps4.pt")
    entry = robustsim.zoo.metric_entry("r-clip-t-vitb16")
    ours = entry.make({"arch": arch, "weights": tmp_path / "vit-b-16-tecoa-eps4.pt"})
    tv = _tv()
    normalize = tv.Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    pre = _open_clip_eval(224)
    x, y = (torch.rand(3, 3, 200, 260, generator=torch.Generator().manual_seed(i)) for i in range(2))
    with torch.no_grad():
        e = {k: theirs.visual(normalize(pre(v))) for k, v in (("x", x), ("y", y))}
        expected = 1 - F.cosine_similarity(e["x"], e["y"], dim=-1)
        assert torch.allclose(ours(x, y), expected, atol=1e-5)
    torch.save(theirs.state_dict(), tmp_path / "whole.pt")
    with pytest.raises(robustsim.WeightsError, match="model.visual") as info:
        entry.make({"arch": arch, "weights": tmp_path / "whole.pt"})
    assert "\n" not in str(info.value)


def _reported_titles():
    from robustsim.bench.cards import columns
    from robustsim.bench.protocol import PROTOCOLS

    return {name: {c.title for c in columns(p)} for name, p in PROTOCOLS.items()}


def test_every_reported_figure_names_a_protocol_and_a_column_of_it():
    titles = _reported_titles()
    for entry in metric_entries():
        for protocol, figures in entry.reported.items():
            assert protocol == "*" or protocol in titles, f"{entry.name}: no protocol {protocol!r}"
            allowed = set.intersection(*titles.values()) if protocol == "*" else titles[protocol]
            assert set(figures) <= allowed, f"{entry.name}: {set(figures) - allowed} are not {protocol} columns"
            assert all(v is None or 0 <= v <= 100 for v in figures.values())


def test_the_papers_protocols_are_bench_protocols_and_cards_show_the_papers_figures(tmp_path):
    """croce2024 is Croce et al.'s evaluation (APGD-CE 100 it., linf 4/255, l2 3.0, reference moving), lipsim is
    LipSim's (AutoAttack, its radii, certified 36/72/108); a leaderboard under croce2024 prints each paper's
    figure beside ours (LipSim margin 0.5: 85.1 / 32.8 / 53.1; R-CLIP_T: 92.3 / 81.9 / 78.5)."""
    from robustsim.bench.cards import reported_for, write_leaderboard
    from robustsim.bench.protocol import get_protocol

    croce, lipsim = get_protocol("croce2024"), get_protocol("lipsim")
    assert croce.attacks == ("apgd-ce",) and croce.steps == 100 and croce.restarts == 1
    assert [(t.norm, t.target, t.eps) for t in croce.threat_models] == [
        ("linf", "ref", (4 / 255,)),
        ("l2", "ref", (3.0,)),
    ]
    assert lipsim.certified_eps == (36 / 255, 72 / 255, 108 / 255) and lipsim.attacks == ("autoattack",)
    assert [t.eps for t in lipsim.threat_models] == [(0.5, 1.0, 2.0), (0.01, 0.02, 0.03)]
    m05 = reported_for(robustsim.zoo.metric_entry("lipsim-small-m0.5").reported, croce)
    assert m05 == {"clean": 85.1, "linf 4/255": 32.8, "l2 3": 53.1}
    rclip = reported_for(robustsim.zoo.metric_entry("r-clip-t-convnext").reported, croce)
    assert rclip == {"clean": 92.3, "linf 4/255": 81.9, "l2 3": 78.5}
    assert reported_for(robustsim.zoo.metric_entry("dino-vitb16").reported, croce) == {"clean": 94.8}
    card = {
        "clean": 0.861,
        "robust": {"linf-ref": {"4/255": 0.3}, "l2-ref": {"3": 0.5}},
        "certified": {},
        "parameters": 10,
        "seconds": 1.0,
        "reported": m05,
    }
    write_leaderboard({"lipsim-small-m0.5": card}, {}, croce, "nights:test", tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "86.1 (paper 85.1)" in md and "30.0 (paper 32.8)" in md and "50.0 (paper 53.1)" in md
    assert "Croce et al. 2024" in md


def test_dreamsim_names_and_the_untuned_ensemble_are_the_packages():
    """DreamSimMetric's names are the zoo's (``dreamsim-dino-vitb16``, not ``dreamsim-dino_vitb16``), and
    ``dreamsim-base`` is built by the package (variant ensemble, no LoRA), from the ensemble release archive."""
    entry = robustsim.zoo.metric_entry("dreamsim-base")
    assert entry.options["variant"] == "ensemble" and entry.options["lora"] is False
    assert "dreamsim_ensemble_checkpoint.zip" in entry.all_files() and not entry.members
    for e in metric_entries():
        if str(e.build).endswith("DreamSimMetric"):
            variant, lora = e.options["variant"], e.options.get("lora", True)
            name = "dreamsim" if variant == "ensemble" else f"dreamsim-{variant.replace('_', '-')}"
            assert (name if lora else f"{name}-base") == e.name


def test_r_clip_nights_lora_is_peft_s_model_merged(tmp_path):
    """R-CLIP's NIGHTS-tuned ConvNeXt (fra31/perceptual-metrics utils_lora.py ``load_lora_models``): LoRA r=16,
    alpha 0.5 on every fc1/fc2 of ``model.visual``, wrapped in vit_wrapper.ViTModel (``.model`` and a ``.blocks``
    alias of trunk.stages). An adapter written by peft's own save_pretrained on that layout, random LoRA weights:
    our merged metric equals peft's model in eval mode; an adapter for another network is refused."""
    peft = import_optional("peft")
    open_clip, arch = _tiny_open_clip(tmp_path, "robustsim-tiny-convnext", TINY_CONVNEXT)
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval()
    with torch.no_grad():  # timm's fresh layer scales are 1e-6: the blocks' MLPs (the adapted layers) would not show
        for name, p in model.visual.named_parameters():
            if name.endswith(("gamma", "ls.gamma")):
                p.fill_(1.0)
    torch.save(model.visual.state_dict(), tmp_path / "tower.pt")
    tv = _tv()
    normalize = tv.Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    x, y = (torch.rand(2, 3, 90, 120, generator=torch.Generator().manual_seed(i)) for i in range(2))
    with torch.no_grad():  # the tower without the adapter (peft adapts model.visual in place below)
        e = [model.visual(normalize(_squash_bicubic()(v))) for v in (x, y)]
        plain = 1 - F.cosine_similarity(e[0], e[1], dim=-1)

    class ViTModel(torch.nn.Module):  # vit_wrapper.ViTModel's layout (a transformers PreTrainedModel there)
        def __init__(self, enc):
            super().__init__()
            self.model = enc
            self.blocks = enc.trunk.stages

        def forward(self, x):
            return self.model(x)

    targets = [n for n, _ in model.visual.named_modules() if "fc1" in n or "fc2" in n]
    config = peft.LoraConfig(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=targets)
    tuned = peft.get_peft_model(ViTModel(model.visual), config)
    for name, p in tuned.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.5)
    tuned.save_pretrained(str(tmp_path / "lora-convnext_base_w-tecoa"))
    tuned.eval()
    entry = robustsim.zoo.metric_entry("r-clip-t-convnext-lora")
    ours = entry.make(
        {
            "arch": arch,
            "weights": tmp_path / "tower.pt",
            "lora": tmp_path / "lora-convnext_base_w-tecoa",
        }
    )
    with torch.no_grad():
        e = {k: tuned(normalize(_squash_bicubic()(v))) for k, v in (("x", x), ("y", y))}
        expected = 1 - F.cosine_similarity(e["x"], e["y"], dim=-1)
        assert torch.allclose(ours(x, y), expected, atol=1e-5)
        assert not torch.allclose(expected, plain, atol=1e-4)  # the adapter changes the metric
    from robustsim.metrics.lora import merge_lora

    with pytest.raises(robustsim.WeightsError, match="does not have"):
        merge_lora(torch.nn.Sequential(torch.nn.Linear(3, 3)), tmp_path / "lora-convnext_base_w-tecoa")
