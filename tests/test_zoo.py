"""Zoo metrics against their upstream packages (lpips, timm, open_clip, efficientnet), the registry's names and
errors, weight files never unpickled."""

import json

import pytest
import torch

import robustsim
from robustsim.compat import import_optional, patch_torchvision_ops
from robustsim.errors import RobustsimError, WeightsError
from robustsim.metrics.weights import load_state_dict

X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
Y = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_compat_imports_and_is_idempotent():
    for mod in ("torchvision", "lpips", "timm", "open_clip"):
        assert import_optional(mod).__name__ == mod
    patch_torchvision_ops()
    assert patch_torchvision_ops() is False  # schemas exist now: nothing left to patch
    with pytest.raises(ImportError, match=r"robustsim\[zoo\]"):
        import_optional("no_such_module_xyz")


def test_registry_names_and_errors():
    names = robustsim.list_metrics()
    for n in (
        "l2",
        "ssim",
        "ms-ssim",
        "lpips-alex",
        "lpips-vgg",
        "lpips-squeeze",
        "clip-vitb16",
        "openclip-vitb16",
        "dino-vitb16",
        "dreamsim",
        "effnet-lite0",
        "effnet-lite1",
        "effnet-lite2",
        "effnet-ensemble",
    ):
        assert n in names
    with pytest.raises(RobustsimError, match="did you mean .*effnet-lite0"):
        robustsim.load_metric("effnet-lite")
    with pytest.raises(RobustsimError, match="has no option 'foo'"):
        robustsim.load_metric("l2", foo=1)
    with pytest.raises(RobustsimError, match="not a robustsim checkpoint"):
        robustsim.load_metric(__file__)


def test_lpips_wrapper_equals_lpips_package(tmp_path, monkeypatch):
    tv = import_optional("torchvision")
    lpips = import_optional("lpips")
    torch.manual_seed(3)
    backbone = tv.models.alexnet(weights=None)
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    path = hub / "alexnet-owt-7be5be79.pth"
    torch.save(backbone.state_dict(), path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # lpips.LPIPS(pretrained backbone) reads the same file from torchvision's cache
    reference = lpips.LPIPS(net="alex", verbose=False).eval()
    ours_explicit = robustsim.load_metric("lpips-alex", weights=str(path))
    expected = reference(X * 2 - 1, Y * 2 - 1).flatten()
    assert torch.equal(ours_explicit(X, Y), expected)
    assert torch.allclose(ours_explicit(X, X), torch.zeros(2))
    # the same bytes found in torchvision's cache are refused: they fail the manifest's pin (size, sha256 prefix)
    with pytest.raises(WeightsError, match="is not alexnet-owt-7be5be79.pth .its sha256 .* differs from the pinned"):
        robustsim.load_metric("lpips-alex")


def test_lpips_missing_weights_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth") as info:
        robustsim.load_metric("lpips-alex")
    assert "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="does not exist"):
        robustsim.load_metric("lpips-alex", weights=tmp_path / "nope.pth")
    m = robustsim.load_metric("lpips-squeeze", pretrained=False)  # random backbone, no file needed
    assert m(X, Y).shape == (2,)


def test_dino_loads_local_checkpoint(tmp_path, monkeypatch):
    timm = import_optional("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match=r"dino-vitb16\.pth is missing and robustsim is offline"):
        robustsim.load_metric("dino-vitb16", arch="vit_tiny_patch16_224", input_size=32)
    torch.save(net.state_dict(), tmp_path / "dino-vitb16.pth")
    m = robustsim.load_metric("dino-vitb16", arch="vit_tiny_patch16_224", input_size=32)
    x = torch.rand(2, 3, 40, 50)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    import_optional("torchvision")
    from torchvision import transforms

    # DINO's eval preprocessing (eval_linear.py: Resize(256, bicubic), CenterCrop(224)) at 32 px: 37, then 32
    dino = transforms.Compose(
        [transforms.Resize(37, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(32)]
    )
    assert torch.allclose(m.embed(x), net((dino(x) - mean) / std), atol=1e-5)


def test_openclip_loads_local_checkpoint(tmp_path):
    open_clip = import_optional("open_clip")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "Tiny-ViT-Test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.manual_seed(0)
    model = open_clip.create_model("Tiny-ViT-Test", pretrained=None, quick_gelu=True).eval()  # OpenAI CLIP: QuickGELU
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    m = robustsim.load_metric("clip-vitb16", arch="Tiny-ViT-Test", weights=str(path), input_size=32)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(m.embed(x), model.encode_image((x - mean) / std), atol=1e-5)


def test_weight_files_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, bad)
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_state_dict(bad)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(b"\x10\x00\x00")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_state_dict(trunc)


@pytest.mark.slow
def test_effnet_pretrained_offline():
    m = robustsim.load_metric("effnet-lite0")
    assert all(not p.requires_grad for p in m.parameters())
    e = m.embed(X)
    assert e.shape[0] == 2 and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    # pretrained features: a slightly blurred photo is closer than a different photo
    from robustsim.data.mini import source_image

    crops = [
        torch.from_numpy(source_image(n)[100:164, 100:164].copy()).permute(2, 0, 1) / 255.0
        for n in ("astronaut", "chelsea", "coffee", "rocket")
    ]
    a, b = torch.stack(crops[:2]), torch.stack(crops[2:])
    blurred = torch.nn.functional.avg_pool2d(a, 3, 1, 1, count_include_pad=False)
    assert torch.all(m(a, blurred) < m(a, b))
    # random init gives different embeddings than the ImageNet weights
    assert not torch.allclose(robustsim.load_metric("effnet-lite0", pretrained=False).embed(X), e)


def test_ensemble_is_mean_of_member_cosines():
    ens = robustsim.load_metric("effnet-lite0+effnet-lite1")
    a, b = robustsim.load_metric("effnet-lite0"), robustsim.load_metric("effnet-lite1")
    assert torch.allclose(ens(X, Y), (a(X, Y) + b(X, Y)) / 2, atol=1e-5)
    ens.fit_centers(torch.cat([X, Y]))
    centred = ens(X, Y)
    assert not torch.allclose(centred, (a(X, Y) + b(X, Y)) / 2, atol=1e-4)
