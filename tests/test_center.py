"""Center smoothing (certify/center.py): bounds on how far a smoothed metric output moves, checked against closed
forms of the smoothed output, exact worst cases, and an EoT attack on the smoothed output."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import linear_metric, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, norm

from robustsim.attacks import smoothed_output_attack
from robustsim.certify import CenterSmoothing
from robustsim.certify.center import quantile_level
from robustsim.errors import InputError
from robustsim.metrics.base import Metric

SIZE = 8


class AffineDistance(Metric):
    """d(x, y) = c + <w, x - y>: the distance output f(x') = d(x', x) is affine in x', so under N(0, sigma^2 I)
    noise it is N(c + <w, x' - x>, sigma^2 ||w||^2): the smoothed output is its mean (a 1-d Gaussian's half-mass
    interval is centred there), and it moves by exactly ||w|| eps at worst."""

    name = "affine"

    def __init__(self, w: torch.Tensor, c: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.c = c

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.c + ((x - y).flatten(1) * self.w.flatten()).sum(1)


def _affine(seed: int) -> AffineDistance:
    g = torch.Generator().manual_seed(seed)
    return AffineDistance(torch.randn(3, SIZE, SIZE, generator=g) / SIZE)


def _images(seed: int, n: int = 3) -> torch.Tensor:
    return 0.25 + 0.5 * torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_the_bound_of_an_affine_output_is_three_times_its_closed_form_quantile():
    """R is the q-quantile of |N(0, s^2)| around the centre (s = sigma ||w||): s Phi^-1((1 + q) / 2); the bound is
    3 R. Any other quantile level, factor or sample order statistic moves it outside 6 %."""
    metric, sigma, eps = _affine(0), 0.2, [0.05, 0.1, 0.2]
    smooth = CenterSmoothing(metric, sigma, n=4000, n_center=2000, alpha=0.01)
    got = smooth.certify(_images(1), eps)
    s = sigma * float(metric.w.norm())
    for j, e in enumerate(eps):
        q = quantile_level(e, sigma, smooth.delta, smooth.n, smooth.alpha / 2)
        closed = 3 * s * norm.ppf((1 + q) / 2)
        assert got["bound"][:, j].tolist() == pytest.approx([closed] * 3, rel=0.06)
        assert (got["bound"][:, j] >= float(metric.w.norm()) * e).all()  # the exact worst case of the mean
    assert not got["abstain"].any()
    assert got["center"].tolist() == pytest.approx([metric.c] * 3, abs=0.25 * s)  # the best of 16 noisy candidates


def test_the_computed_centre_moves_within_the_bound_at_the_exact_worst_perturbation_over_many_seeds():
    """For 40 seeds x 3 images, the procedure's own centre at x + eps w / ||w|| (the exact worst case of the
    smoothed output) stays within the bound of x's certificate; failures stay within the stated alpha."""
    fails, trials, alpha = 0, 0, 0.01
    for seed in range(40):
        metric = _affine(seed)
        smooth = CenterSmoothing(metric, 0.2, n=600, n_center=1500, alpha=alpha, seed=seed)
        x, eps = _images(100 + seed), 0.15
        got = smooth.certify(x, [eps])
        delta = eps * metric.w / metric.w.norm()
        x_adv = x + delta  # inside [0, 1]: the images stay in [0.25, 0.75]
        assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= eps * (1 + 1e-6)
        moved, _ = smooth.center(x_adv, ids=torch.arange(3) + 1000, clean=x)
        start, _ = smooth.center(x)
        ok = ~got["abstain"]
        shift = (moved - start).abs()[:, 0]
        fails += int((shift[ok] > got["bound"][ok, 0]).sum())
        trials += int(ok.sum())
    assert trials >= 110
    assert binomtest(fails, trials, alpha, alternative="greater").pvalue > 1e-3, (fails, trials)


def _isometric(seed: int):
    return linear_metric(seed, SIZE, 6, 1.0, 1.0, isometric=True).float()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10**6), sigma=st.sampled_from([0.1, 0.2]), ratio=st.floats(0.1, 1.0))
def test_an_embedding_bound_holds_the_exact_worst_case_of_its_smoothed_direction(seed, sigma, ratio):
    """f(x) = W (x - 1/2) with orthonormal rows: the noisy embeddings are isotropic around f(x), so the smoothed
    direction is f(x)'s; within eps it turns by at most arcsin(eps / ||f(x)||), reached when the moving image
    pushes f(x) sideways. The certified angle must cover it (in metric units: 1 - cos)."""
    metric, eps = _isometric(seed % 97), ratio * sigma
    smooth = CenterSmoothing(metric, sigma, n=500, n_center=1500, alpha=0.01, seed=seed)
    x = _images(seed)
    got = smooth.certify(x, [eps])
    e = metric.embed(x).double()
    worst = torch.arcsin((eps / e.norm(dim=1)).clamp(max=1.0))
    ok = ~got["abstain"]
    assert (got["angle"][ok, 0] >= worst[ok]).all()
    assert (got["bound"][ok, 0] >= 1 - torch.cos(worst[ok]) - 1e-12).all()


def test_an_eot_attack_on_the_smoothed_output_never_exceeds_the_bound():
    """APGD with 8 noise draws per step pushes the smoothed output of a random CNN; the centre it reaches stays
    within the certified bound of every image (and the attack moves it: it is not a no-op)."""
    from conftest import small_embedding_metric

    metric = small_embedding_metric()
    smooth = CenterSmoothing(metric, 0.25, n=400, n_center=1500, alpha=0.01, batch=512)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    eps = 0.5
    got = smooth.certify(x, [eps])
    _, moved = smoothed_output_attack(smooth, x, eps, steps=15, eot=8, ids=torch.arange(4) + 50)
    ok = ~got["abstain"]
    assert ok.sum() >= 3
    assert (moved[ok] <= got["angle"][ok, 0]).all(), (moved, got["angle"])
    _, still = smoothed_output_attack(smooth, x, 0.0, steps=1, eot=1, ids=torch.arange(4) + 50)
    assert float(moved.mean()) > float(still.mean())


def test_arguments_are_checked_in_one_line():
    metric = _affine(0)
    for kwargs, words in (
        ({"delta": 0.6}, "delta must be a number in (0, 0.5)"),
        ({"n_center": 50}, "use n_center >= "),
        ({"n": 0}, "n must be an integer >= 1"),
    ):
        with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
            CenterSmoothing(metric, 0.25, **kwargs)
    with pytest.raises(InputError, match="sigma must be in"):
        CenterSmoothing(metric, -1.0)


def test_certify_center_smoothing_writes_per_image_bounds_the_abstain_rate_and_the_confidence(tmp_path, capsys):
    out = tmp_path / "cs.json"
    code = run_cli(
        ["certify", "--method", "center-smoothing", "--metric", "l2", "--data", "mini:test", "--limit", "3"]
        + ["--sigma", "0.1", "--eps", "0.05,0.5", "--n", "300", "--n-center", "1500", "--json", str(out)]
    )
    assert code == 0
    assert "median bound" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["kind"] == "center-smoothing" and report["confidence"] == pytest.approx(0.999)
    assert report["abstain_rate"] == 0.0 and len(report["images"]) == 3
    first = report["images"][0]
    # eps 0.5 = 5 sigma needs q > 1: not certifiable with 300 draws, written as null, not as a number
    assert first["bound"][0] > 0 and first["bound"][1] is None
    assert report["median_bound"][0] == pytest.approx(sorted(i["bound"][0] for i in report["images"])[1])
    for bad, words in ((["--norm", "linf", "--eps", "1/255"], "l2 balls"), (["--target", "x0"], "reference image")):
        code = run_cli(["certify", "--method", "center-smoothing", "--metric", "l2", "--data", "mini:test"] + bad)
        err = capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not math.isnan(report["median_bound"][0])
