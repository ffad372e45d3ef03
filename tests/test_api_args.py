"""The Python API's public boundary. Every bad argument a careless user passes gives a
RobustsimError (InputError) of one line naming the argument, never a traceback from inside or a silent wrong
answer."""

from __future__ import annotations

import math

import pytest
import torch

import robustsim
from robustsim.bench import run as bench_run
from robustsim.data import open_triplets


@pytest.fixture(scope="module")
def l2():
    return robustsim.load_metric("l2")


def _cases(m):
    t = torch.tensor
    return {
        "load_metric device='nope'": lambda: robustsim.load_metric("l2", device="nope"),
        "load_metric device=5": lambda: robustsim.load_metric("l2", device=5),
        "benchmark(None)": lambda: robustsim.benchmark(None),
        **{
            f"benchmark eps={e!r}": (lambda e=e: robustsim.benchmark("l2", eps=e)) for e in (-1, math.nan, math.inf, [])
        },
        "benchmark device='nope'": lambda: robustsim.benchmark("l2", device="nope"),
        "benchmark data=123": lambda: robustsim.benchmark("l2", data=123),
        "benchmark eps='abc'": lambda: robustsim.benchmark("l2", eps="abc"),
        "bench.run limit=0": lambda: bench_run(["l2"], "mini", "/tmp/unused-bench", limit=0),
        "bench.run out=None": lambda: bench_run(["l2"], "mini", None),
        "SmoothedMetric(None)": lambda: robustsim.SmoothedMetric(None, 0.25),
        "SmoothedMetric('ssim')": lambda: robustsim.SmoothedMetric("ssim", 0.25),
        "SmoothedMetric n=True": lambda: robustsim.SmoothedMetric(m, 0.25, n=True),
        "SmoothedMetric n=2.5": lambda: robustsim.SmoothedMetric(m, 0.25, n=2.5),
        "SmoothedMetric batch=0": lambda: robustsim.SmoothedMetric(m, 0.25, batch=0),
        "SmoothedMetric sigma='0.25'": lambda: robustsim.SmoothedMetric(m, "0.25"),
        "two_afc_score p=2": lambda: robustsim.two_afc_score(t([0.1]), t([0.2]), t([2.0])),
        "two_afc_score strings": lambda: robustsim.two_afc_score(["a"], ["b"], [0.5]),
        "two_afc_score nan": lambda: robustsim.two_afc_score([math.nan], [0.1], [0.5]),
        "PerceptualLoss(None)": lambda: robustsim.PerceptualLoss(None),
        "EnsembleMetric([])": lambda: robustsim.EnsembleMetric([]),
        "EnsembleMetric([None])": lambda: robustsim.EnsembleMetric([None]),
        "open_triplets(None)": lambda: open_triplets(None),
        "open_triplets limit=-1": lambda: open_triplets("mini", limit=-1),
        "open_triplets size=0": lambda: open_triplets("mini", size=0),
        "register_metric(None, ...)": lambda: robustsim.register_metric(None, lambda: m),
        "register_metric('x', None)": lambda: robustsim.register_metric("x-probe", None),
    }


CASES = list(_cases(None))


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_one_line_naming_it(case, l2):
    with pytest.raises(robustsim.RobustsimError) as info:
        _cases(l2)[case]()
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_lists_of_numbers_are_scored_like_tensors():
    assert robustsim.two_afc_score([0.1, 0.2], [0.2, 0.1], [0.0, 1.0]) == 1.0
    assert robustsim.two_afc_score([0.1, 0.2], [0.2, 0.1], [1.0, 0.0]) == 0.0
