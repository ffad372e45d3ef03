"""Structural Lipschitz bounds (robustsim.nn.bounds) of users' own networks: a module counts only by its exact type
with its parameters read, every accepted kind is tried with parameters that make it far from 1-Lipschitz, and
certificates built on the bounds are attacked."""

from __future__ import annotations

import pytest
import torch
from conftest import per_image_pgd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustsim.certify import certified_radius, estimate_lipschitz, float64_copy, network_lipschitz
from robustsim.certify.rounding import embed_with_error
from robustsim.errors import RobustsimError
from robustsim.metrics import EmbeddingMetric
from robustsim.nn.compose import lipschitz_bound

PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


def _triplets(seed: int, n: int = 8, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    return ref, torch.rand(n, 3, size, size, generator=g), torch.rand(n, 3, size, size, generator=g)


def test_a_leaky_relu_of_slope_4_is_bounded_by_4_and_its_certificate_holds():
    """LeakyReLU(4.0) once counted as 1-Lipschitz and PGD flipped 16/16 triplets inside the
    radius; its bound is max(1, |slope|) and no attack breaks the radius built on it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.LeakyReLU(4.0), nn.Linear(16, 8))
    metric = EmbeddingMetric(net, name="leaky")
    expected = (
        4.0
        * float(torch.linalg.matrix_norm(net[1].weight.detach().double(), ord=2))
        * float(torch.linalg.matrix_norm(net[3].weight.detach().double(), ord=2))
    )
    assert network_lipschitz(metric) == (pytest.approx(expected, rel=1e-8), "structure")
    ref, x0, x1 = _triplets(0, 16)
    r = certified_radius(metric, ref, x0, x1)
    broken = per_image_pgd(metric, ref, x0, x1, "ref", 0.999 * r, steps=60)
    assert (r > 0).any() and not (broken & (r > 0)).any()
    assert estimate_lipschitz(net, ref) <= lipschitz_bound(net, ref[:1])


def test_look_alikes_are_bounded_by_what_they_compute_and_unknown_calls_refused_in_one_line():
    """A subclass that scales its parent's output, a Sequential subclass with its own forward: the calls that run
    are recorded, so the factor is in the bound; a call with no rule is refused naming the module."""

    class Relu3(nn.ReLU):
        def forward(self, x):
            return 3 * super().forward(x)

    class Doubled(nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    assert network_lipschitz(EmbeddingMetric(nn.Sequential(nn.Flatten(), Relu3())))[0] == pytest.approx(3.0)
    assert network_lipschitz(EmbeddingMetric(Doubled(nn.Flatten())))[0] == pytest.approx(2.0)

    class Squash(nn.Module):
        def forward(self, x):
            return torch.exp(x)

    with pytest.raises(RobustsimError, match=r"net.1: torch.exp has no Lipschitz rule") as err:
        network_lipschitz(EmbeddingMetric(nn.Sequential(nn.Flatten(), Squash())))
    assert "\n" not in str(err.value)
    # a reflect pad is bounded by how often it repeats a pixel (tests/test_user_networks.py attacks it); modules whose
    # output depends on training mode are refused by the certifier while in it, and bounded as their eval function
    reflect = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert estimate_lipschitz(reflect, image) <= lipschitz_bound(reflect, (3, 8, 8))  # border taps read pixels twice
    for module in (nn.Dropout(0.5), nn.BatchNorm1d(12)):
        net = nn.Sequential(nn.Flatten(), module)
        with pytest.raises(RobustsimError, match="in training mode") as err:
            network_lipschitz(EmbeddingMetric(net))
        assert "\n" not in str(err.value) and "metric.eval()" in str(err.value)
        expected = 1.0 if isinstance(module, nn.Dropout) else _bn_gain(module)
        assert network_lipschitz(EmbeddingMetric(net.eval()), (1, 4))[0] == pytest.approx(expected)


def _bn_gain(m: nn.BatchNorm1d) -> float:
    return float((m.weight.detach().double().abs() / torch.sqrt(m.running_var.double() + m.eps)).max())


def _layer(kind: str, scale: float, width: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        m = nn.Linear(width, width)
    elif kind == "leaky":
        return nn.LeakyReLU(0.2 + 4 * torch.rand(1, generator=g).item())
    elif kind == "batchnorm":
        m = nn.BatchNorm1d(width)
        m.running_mean.uniform_(-1, 1, generator=g)
        m.running_var.uniform_(0.05, 2, generator=g)
        m.weight.data.uniform_(-3, 3, generator=g)
        return m.eval()
    else:
        return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "identity": nn.Identity()}[kind]
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return m


KINDS = ["linear", "leaky", "batchnorm", "relu", "tanh", "sigmoid", "identity"]


@PROPERTY
@given(
    seed=st.integers(0, 10_000),
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
    scale=st.floats(0.2, 3.0),
    conv_padding=st.sampled_from(["zeros", "circular"]),
)
def test_every_accepted_module_kind_is_bounded_from_its_parameters(seed, kinds, scale, conv_padding):
    """Random user networks of every kind lipschitz_bound accepts (a Conv2d, then Linear, LeakyReLU, BatchNorm,
    ... with weights scaled far from 1-Lipschitz): an independent estimate never exceeds the bound, the float32
    rounding bound covers the float32 forward's distance to the float64 one, and the float32 certificate holds."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 2, 3, padding=1, padding_mode=conv_padding)
    with torch.no_grad():
        conv.weight.mul_(scale * 3)
    width = 2 * 4 * 4
    net = nn.Sequential(conv, nn.Flatten(), *[_layer(k, scale, width, seed + i) for i, k in enumerate(kinds)]).eval()
    metric = EmbeddingMetric(net, name="user").requires_grad_(False)
    ref, x0, x1 = _triplets(seed)
    bound = lipschitz_bound(net, ref[:1])
    assert estimate_lipschitz(net, ref, power_steps=30, ascent_steps=30) <= bound * (1 + 1e-5)
    twin = float64_copy(metric)
    _, e32, r32 = embed_with_error(metric, ref)
    _, e64, r64 = embed_with_error(twin, ref.double())
    assert torch.all((e32 - e64).norm(dim=1) <= r32.delta + r64.delta) and not r32.assumed
    r = certified_radius(metric, ref, x0, x1)
    broken = per_image_pgd(metric, ref, x0, x1, "ref", 0.999 * r, steps=40)
    assert not (broken & (r > 0)).any()  # radius 0 claims nothing (a tie, e.g. ReLU zeroing an embedding, "flips")
