"""Certificates of networks users build: every construction is either certified soundly (its bound
is at least the gain an ascent finds, and a strong attack inside the certified radius never flips the float32
decision) or refused in one line naming the module."""

from __future__ import annotations

import pytest
import torch
from test_certify import attack_at, random_triplets
from torch import nn

from robustsim.certify import certified_radius, estimate_lipschitz, network_lipschitz
from robustsim.errors import RobustsimError
from robustsim.metrics import EmbeddingMetric
from robustsim.nn.compose import lipschitz_bound


def _conv_net(conv: nn.Module) -> nn.Module:
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(8 * _side(conv) ** 2, 24))


def _side(conv: nn.Module, n: int = 16) -> int:
    with torch.no_grad():
        return int(conv(torch.zeros(1, 3, n, n)).shape[-1])


def _padded(mode: str, pad: int, kernel: int = 3, stride: int = 1) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, kernel, padding=pad, padding_mode=mode, stride=stride)
    return _conv_net(conv).eval()


def _hooked(kind: str) -> nn.Module:
    """A net whose conv carries torch's hook-style spectral / weight norm, given trained weights by load_state_dict
    and certified before any forward: the ``weight`` attribute is then stale (what the hook set at registration)."""
    wrap = {"spectral": nn.utils.spectral_norm, "weight": nn.utils.weight_norm}[kind]
    torch.manual_seed(0)
    trained = _conv_net(wrap(nn.Conv2d(3, 8, 3, padding=1)))
    with torch.no_grad():
        for _ in range(3):  # a few forwards in training mode: the power vectors move (spectral norm)
            trained(torch.rand(2, 3, 16, 16))
        for name, p in trained.named_parameters():  # trained weights far from the init's scale
            if name.startswith("0."):  # spectral norm's stale attribute shares weight_orig's storage: make it small
                p.mul_(0.2 if kind == "spectral" else 2.0)
    torch.manual_seed(1)
    small = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        small.weight.mul_(0.1)  # the stale attribute (this init) is far below what the loaded weights apply
    fresh = _conv_net(wrap(small))
    fresh.load_state_dict(trained.state_dict())
    return fresh.eval()


CERTIFIED = {
    "circular pad 2 (wider than half the kernel)": lambda: _padded("circular", 2),
    "circular pad 1, stride 2": lambda: _padded("circular", 1, stride=2),
    "reflect pad 1": lambda: _padded("reflect", 1),
    "replicate pad 2": lambda: _padded("replicate", 2),
    "zeros pad 3, kernel 5": lambda: _padded("zeros", 3, kernel=5),
    "hook-style spectral_norm": lambda: _hooked("spectral"),
    "hook-style weight_norm": lambda: _hooked("weight"),
    "parametrized spectral_norm": lambda: _conv_net(
        nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 8, 3, padding=1))
    ).eval(),
}


@pytest.mark.parametrize("build", CERTIFIED.values(), ids=CERTIFIED.keys())
def test_a_user_network_is_bounded_by_what_its_forward_applies_and_its_radius_is_never_broken(build):
    net = build()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    bound = lipschitz_bound(net, x[:1])
    found = estimate_lipschitz(net, x, power_steps=30, ascent_steps=60)
    assert found <= bound * (1 + 1e-5), (found, bound)  # the proof speaks of the function that runs
    # deployed in float64: these unconditioned random nets' worst-case float32 rounding leaves no float32 radius,
    # and the point here is the structure's bound (test_certify_rounding attacks float32 certificates)
    metric = EmbeddingMetric(net, name="user").double().eval()
    ref, x0, x1 = (t.double() for t in random_triplets(48, seed=3, spread=0.3))
    radius = certified_radius(metric, ref, x0, x1)
    assert (radius > 0).sum() >= 40
    assert not attack_at(metric, ref, x0, x1, radius * 0.999, steps=60, restarts=2).any()


def test_a_circular_pad_wider_than_half_the_kernel_is_bounded_by_its_repeats():
    """An identity (dirac) kernel of 3 x 3 with circular pad 2: the output holds the image and its wrapped border
    rows and columns again, so a corner pixel is read four times: gain 2, where each tap is an isometry (the bound
    of a 'same' circular pad, 1, would be broken)."""
    conv = nn.Conv2d(3, 3, 3, padding=2, padding_mode="circular", bias=False)
    nn.init.dirac_(conv.weight)
    net = nn.Sequential(conv)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gain = estimate_lipschitz(net, x, power_steps=60, ascent_steps=60)
    bound = lipschitz_bound(net, x[:1])
    assert bound == pytest.approx(2.0, rel=1e-6) and 1.9 < gain <= bound * (1 + 1e-6)  # the estimate is float32


REFUSED = {
    "Dropout in training mode": (
        lambda: nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(768, 8)).train(),
        "Dropout (net.1) in training mode",
    ),
    "BatchNorm in training mode": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()).train(),
        "BatchNorm2d (net.1) in training mode",
    ),
    "hook-style spectral_norm in training mode": (
        lambda: nn.Sequential(nn.utils.spectral_norm(nn.Linear(768, 8))).train(),
        "in training mode",
    ),
}


def _with_hook(net: nn.Module) -> nn.Module:
    net[1].register_forward_hook(lambda m, args, out: 3 * out)
    return net


def _with_pre_hook(net: nn.Module) -> nn.Module:
    net[1].register_forward_pre_hook(lambda m, args: (3 * args[0],))
    return net


@pytest.mark.parametrize("build", [_with_hook, _with_pre_hook], ids=["forward hook", "forward pre-hook"])
def test_a_hook_that_changes_the_output_is_in_the_bound(build):
    """A hook's work runs, so it is recorded and bounded: 3 times the linear layer's norm."""
    net = build(nn.Sequential(nn.Flatten(), nn.Linear(768, 8)).eval())
    expected = 3 * float(torch.linalg.matrix_norm(net[1].weight.detach().double(), ord=2))
    assert network_lipschitz(EmbeddingMetric(net, name="user"))[0] == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("build, says", REFUSED.values(), ids=REFUSED.keys())
def test_what_the_proof_does_not_cover_is_refused_in_one_line(build, says):
    metric = EmbeddingMetric(build(), name="user")
    metric.training = False  # the metric object itself; its modules keep their own mode
    with pytest.raises(RobustsimError) as err:
        network_lipschitz(metric)
    text = str(err.value)
    assert says in text and "\n" not in text


def test_a_network_in_eval_mode_with_dropout_is_certified_as_the_identity_it_is():
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(768, 8)).eval()
    assert network_lipschitz(EmbeddingMetric(net))[0] == pytest.approx(lipschitz_bound(net[2], (768,)))
