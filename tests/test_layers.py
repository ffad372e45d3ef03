"""AOL, CPL and orthogonal (AOC) layers are 1-Lipschitz for every parameter value (checked by an
independent estimate at init and after training), their bounds are derived, and LipSimNet builds with any
of them, saves the choice and still loads older checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from robustsim.certify import estimate_lipschitz, lipschitz_bound
from robustsim.models import LipSimNet, LipSimPreset, load_net, save_checkpoint
from robustsim.nn import LAYERS as LAYER_KINDS
from robustsim.nn import AOLConv2d, AOLLinear, CPLConv2d, CPLLinear, OrthoConvBlock
from robustsim.nn.spectral import conv_operator_norm
from robustsim.threat import ThreatModel

LAYERS = sorted(LAYER_KINDS)  # every registered kind is tested


def stretch(module: torch.nn.Module, x: torch.Tensor, steps: int = 40) -> None:
    """Train the weights to *maximise* ||f(a) - f(b)|| / ||a - b||: the hardest test of a bound."""
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    module.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        a, b = x, x + 0.05 * torch.randn(x.shape, generator=g)
        ratio = (module(a) - module(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
        opt.zero_grad()
        (-ratio.mean()).backward()
        opt.step()
    module.eval()


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: AOLConv2d(6), (4, 6, 8, 8)),
        (lambda: AOLLinear(12), (4, 12)),
        (lambda: CPLConv2d(6, spatial=8), (4, 6, 8, 8)),
        (lambda: CPLLinear(12, 7), (4, 12)),
        (lambda: _ortho_block(8), (4, 8, 8, 8)),
    ],
)
def test_every_layer_is_1_lipschitz_at_init_and_after_adversarial_training(make, shape):
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(shape)
    assert estimate_lipschitz(layer, x, power_steps=30, ascent_steps=30) <= 1 + 1e-4
    assert lipschitz_bound(layer) <= 1 + 1e-5
    stretch(layer, x)
    assert estimate_lipschitz(layer, x, power_steps=30, ascent_steps=30) <= 1 + 1e-4
    assert lipschitz_bound(layer) <= 1 + 1e-5


def _ortho_block(c: int) -> OrthoConvBlock:
    block = OrthoConvBlock(c)
    block.spatial = 8
    return block


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 12), c=st.integers(1, 5))
def test_the_fft_bound_covers_the_zero_padded_convolution(seed, n, c):
    """Power iteration on the actual zero-padded operator never exceeds the bound CPL scales by."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(c + 1, c, 3, 3, generator=g, dtype=torch.float64)
    bound = float(conv_operator_norm(k, n))
    v = torch.randn(1, c, n, n, generator=g, dtype=torch.float64)
    for _ in range(200):
        v = F.conv_transpose2d(F.conv2d(v, k, padding=1), k, padding=1)
        v = v / v.norm()
    actual = float(F.conv2d(v, k, padding=1).norm())
    assert actual <= bound * (1 + 1e-9) and actual > 0.5 * bound


@pytest.mark.parametrize("layer", LAYERS)
def test_lipsimnet_builds_with_every_layer_kind_and_saves_it(layer, tmp_path):
    torch.manual_seed(0)
    net = LipSimNet(LipSimPreset(2, 8, 1, 32, layer=layer), embed_dim=16, input_size=32).eval()
    x = torch.rand(3, 3, 32, 32) - 0.5
    assert net.certified_bound() <= 1 + 1e-5
    assert estimate_lipschitz(net, x, power_steps=10, ascent_steps=10) <= 1 + 1e-4
    path = save_checkpoint(tmp_path / "ckpt", net)
    loaded, cfg = load_net(path)
    assert cfg["model"]["layers"]["layer"] == layer
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-6)


def test_checkpoints_from_before_layer_kinds_still_load(tmp_path):
    net = LipSimNet("nano", embed_dim=16, input_size=32)
    path = save_checkpoint(tmp_path / "old", net)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["preset"] = "custom"
    cfg["model"]["layers"] = {"convs": 4, "channels": 16, "linears": 2, "width": 256}  # the old four fields
    (path / "config.json").write_text(json.dumps(cfg))
    loaded, _ = load_net(path)
    assert loaded.preset.layer == "sll" and loaded.preset.head == "projection"
    with pytest.raises(Exception, match="layer must be one of"):
        cfg["model"]["layers"]["layer"] = "magic"
        (path / "config.json").write_text(json.dumps(cfg))
        load_net(path)


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_kind_is_certified_soundly_in_float64(layer):
    """The certifier's float64 copy runs on every kind (a parametrised AOC kernel included), leaves the model as it
    was, and gives the float32 network's embeddings within the float32 forward's rounding bound; no attack beats
    its radii."""
    from robustsim.audit import run_audit
    from robustsim.certify import embed_with_error, float64_copy
    from robustsim.data import open_triplets
    from robustsim.models.lipsim import LipSimMetric

    torch.manual_seed(0)
    metric = LipSimMetric(LipSimNet(LipSimPreset(2, 8, 1, 32, layer=layer), embed_dim=64, input_size=64).eval())
    x = torch.rand(4, 3, 64, 64)
    _, e32, r32 = embed_with_error(metric, x)
    _, e64, r64 = embed_with_error(float64_copy(metric), x)
    assert ((e32 - e64).norm(dim=1) <= r32.delta + r64.delta).all() and (r32.delta > 0).all()
    assert next(metric.net.parameters()).dtype == torch.float32  # the float64 copy leaves the model as it was
    data = open_triplets("mini:test", limit=24)
    threat = ThreatModel("l2", "ref", (36 / 255, 0.25))
    report = run_audit(metric, data, threat, ["apgd-ce", "apgd-margin"], steps=20, progress=False)
    assert report.certified[0] > 0  # certified <= robust <= clean is checked by the audit itself


@pytest.mark.portable
@pytest.mark.parametrize("layer", LAYERS)
def test_a_frozen_net_saves_and_loads_as_the_same_function_and_thaws_to_train(tmp_path, layer):
    """Freezing stores every weight-derived tensor in the layout the loader gives it (contiguous): the saved frozen
    checkpoint loads as the same tensors in the same layout (its config says frozen), so in one process both run
    the same kernels and give the same bits; a thawed copy derives its tensors from the weights again."""
    torch.manual_seed(0)
    net = LipSimNet(LipSimPreset(2, 8, 1, 32, layer=layer), embed_dim=16, input_size=16).eval()
    x = torch.rand(3, 3, 16, 16)
    net.freeze()
    assert net.frozen and net.config()["frozen"] is True
    y = net(x)
    net.train()
    assert torch.equal(net.eval()(x), y)  # the same tensors, the same kernels, one process
    save_checkpoint(tmp_path / "ck", net)
    loaded, cfg = load_net(tmp_path / "ck")
    mine, theirs = net.state_dict(), loaded.state_dict()  # what the forward applies (not CPL's power vectors)
    assert mine.keys() == theirs.keys()
    for k, v in mine.items():  # the law that makes the bits equal: same values in the same layout
        assert v.is_contiguous() and v.stride() == theirs[k].stride() and torch.equal(v, theirs[k]), k
    assert cfg["model"]["frozen"] is True and loaded.frozen and torch.equal(loaded(x), y)
    loaded.thaw().train()
    assert not loaded.frozen and "frozen" not in loaded.config()
    loaded(x).sum().backward()
    kernels = [p for n, p in loaded.named_parameters() if n.endswith(("weight", "weight.original")) and "features" in n]
    assert kernels and all(p.grad is not None and p.grad.abs().sum() > 0 for p in kernels)
