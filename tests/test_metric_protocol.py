"""The Metric protocol (robustsim.metrics.base): one-line input errors, pixel metrics' values, embedding
distances and gradients, pairwise distances, float64 input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import robustsim
from robustsim.errors import InputError
from robustsim.metrics.base import EmbeddingMetric, validate_images

X = torch.rand(2, 3, 16, 16)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(3, 16, 16), r"x\[None\]"),
        (torch.rand(2, 1, 16, 16), "expand"),
        (torch.rand(2, 4, 16, 16), "drop alpha"),
        (torch.rand(2, 16, 16, 3), "permute"),
        ((torch.rand(2, 3, 16, 16) * 255).byte(), "/ 255"),
        (torch.full((2, 3, 16, 16), float("nan")), "NaN"),
        (torch.full((2, 3, 16, 16), float("inf")), "NaN or inf"),
        (torch.rand(2, 3, 16, 16) * 255, "divide by 255"),
        (torch.rand(2, 3, 16, 16) * 2 - 1, r"\(x \+ 1\) / 2"),
        (torch.zeros(0, 3, 16, 16), "empty"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_validation_errors_are_one_line_with_fix(bad, match):
    with pytest.raises(InputError, match=match) as info:
        validate_images(bad)
    assert "\n" not in str(info.value)


def test_metric_call_validates_and_checks_batch():
    m = robustsim.load_metric("l2")
    with pytest.raises(InputError, match="batch sizes differ"):
        m(X, torch.rand(3, 3, 16, 16))
    with pytest.raises(InputError, match="divide by 255"):
        m(X * 255, X)
    with pytest.raises(InputError, match="equal shapes"):
        m(X, torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("name", ["l2", "l1", "ssim", "ms-ssim"])
def test_pixel_metrics(name):
    m = robustsim.load_metric(name)
    y = (X + 0.1 * torch.randn_like(X)).clamp(0, 1)
    d = m(X, y)
    assert d.shape == (2,)
    assert torch.all(d > 0)
    assert torch.allclose(m(X, X), torch.zeros(2), atol=1e-6)
    assert torch.allclose(m(y, X), d, atol=1e-5)
    # more noise -> larger distance
    z = (X + 0.4 * torch.randn_like(X)).clamp(0, 1)
    assert torch.all(m(X, z) > d)


def test_l2_value():
    y = X.clone()
    y[:, 0] = 0
    expected = ((X - y) ** 2).flatten(1).mean(1)
    assert torch.allclose(robustsim.load_metric("l2")(X, y), expected)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_embedding_metric_is_half_squared_chord(seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(3, 3, 12, 12, generator=g), torch.rand(3, 3, 12, 12, generator=g)
    m = EmbeddingMetric(Tiny(), input_size=16, mean=0.5, std=0.25)
    ex, ey = m.embed(x), m.embed(y)
    phi = lambda e: e / e.norm(dim=1, keepdim=True)  # noqa: E731
    expected = (phi(ex) - phi(ey)).pow(2).sum(1) / 2
    assert m.embed(x).shape == (3, 8)
    assert torch.allclose(m(x, y), expected, atol=1e-5)
    assert torch.all(m(x, y) >= 0) and torch.all(m(x, y) <= 2)
    # resizing and normalising happen inside: the network sees (x_resized - 0.5) / 0.25
    raw = Tiny()((torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear") - 0.5) / 0.25)
    assert torch.allclose(ex, raw, atol=1e-5)


def test_embedding_metric_gradients_flow():
    m = EmbeddingMetric(Tiny())
    x = X.clone().requires_grad_(True)
    m(x, torch.rand_like(X)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(["l2", "l1", "ssim", "embedding"]), st.integers(1, 4), st.integers(1, 5), st.integers(0, 999))
def test_pairwise_equals_distance_on_every_pair(name, bx, by, seed):
    """metric.pairwise(x, y)[i, j] == metric(x[i], y[j]): closed forms and the chunked default agree."""
    torch.manual_seed(seed)
    if name == "embedding":
        metric = EmbeddingMetric(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    else:
        metric = robustsim.load_metric(name)
    x, y = torch.rand(bx, 3, 16, 16), torch.rand(by, 3, 16, 16)
    with torch.no_grad():
        pw = metric.pairwise(x, y)
        default = robustsim.Metric.pairwise(metric, x, y)
        pairs = torch.stack([metric(x[i : i + 1].expand(by, -1, -1, -1), y) for i in range(bx)])
    assert pw.shape == (bx, by)
    assert torch.allclose(pw, pairs, atol=1e-5) and torch.allclose(default, pairs, atol=1e-6)
