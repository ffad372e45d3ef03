"""DISTS (robustsim.metrics.dists) is piq's DISTS with its weight files resolved through the weights manager:
the same numbers as piq built directly on the same weights, 0 on identical images, symmetric, in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustsim.compat import import_optional

piq = import_optional("piq")  # torchvision (which piq imports) loads through robustsim.compat


def _weights(tmp_path: Path) -> dict[str, Path]:
    """A random VGG16 (its classifier as zero-stride tensors: a small file) and random DISTS alpha / beta summing
    to 1, in the layouts torchvision and piq load (``vgg16-397923af.pth``, ``dists_weights.pt``)."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    sd = vgg16().state_dict()
    small = {k: (v if k.startswith("features") else torch.zeros(1).expand_as(v)) for k, v in sd.items()}
    torch.save(small, tmp_path / "vgg16-397923af.pth")
    channels = 3 + 64 + 128 + 256 + 512 + 512
    w = torch.rand(2, 1, channels, 1, 1)
    alpha, beta = w / w.sum()  # the published weights sum to 1 over both terms: DISTS(x, x) = 1
    torch.save({"alpha": alpha, "beta": beta}, tmp_path / "dists_weights.pt")
    return {p.name: p for p in tmp_path.glob("*.p*")}


@pytest.mark.slow
def test_dists_equals_piq_on_the_same_weights(tmp_path, monkeypatch):
    import piq
    from torchvision.models import _api

    import robustsim.weights as weights

    files = _weights(tmp_path)
    monkeypatch.setattr(weights, "resolve", lambda name, fetch=True, progress=True: files[name])
    from robustsim.metrics.dists import DISTSMetric

    ours = DISTSMetric()
    load = lambda url, *a, **k: torch.load(files[Path(url).name], weights_only=True)  # noqa: E731
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", load)
    monkeypatch.setattr(_api, "load_state_dict_from_url", load)
    theirs = piq.DISTS(reduction="none").eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 48, 48, generator=g), torch.rand(3, 3, 48, 48, generator=g)
    with torch.no_grad():
        d = ours(x, y)
        assert torch.allclose(d, theirs(x, y).flatten(), atol=1e-6)
        assert torch.allclose(d, ours(y, x), atol=1e-5) and float(ours(x, x).abs().max()) < 1e-5
    assert ((d >= 0) & (d <= 1)).all()
