"""The threat model value (robustsim.threat): validation, the one epsilon formatter, coercion, JSON."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustsim.errors import InputError
from robustsim.threat import ThreatModel, format_eps, parse_eps


@pytest.mark.parametrize(
    "eps, text",
    [
        (0.5, "0.5"),
        (1.0, "1"),
        (2.0, "2"),
        (0.2, "0.2"),
        (36 / 255, "36/255"),
        (4 / 255, "4/255"),
        (0.01, "0.01"),
        (0.0, "0"),
        (3.0, "3"),
        (108 / 255, "108/255"),
    ],
)
def test_one_formatter_writes_radii_as_people_do(eps, text):
    assert format_eps(eps) == text and ThreatModel("l2", "ref", (eps,)).labels() == [text]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(0, 2000).map(lambda k: k / 255), st.floats(0, 100, allow_nan=False)))
def test_a_label_reads_back_as_its_radius(eps):
    assert math.isclose(parse_eps(format_eps(eps)), eps, rel_tol=1e-5, abs_tol=1e-9)


def test_radii_are_sorted_and_checked_in_one_line():
    tm = ThreatModel("linf", "x0", (8 / 255, 2 / 255))
    assert tm.eps == (2 / 255, 8 / 255) and tm.key() == "linf-x0" and "x0" in tm.describe()
    for bad, match in [
        (dict(norm="l3"), "norm"),
        (dict(target="x2"), "target"),
        (dict(eps=(-1.0,)), "radii"),
        (dict(eps=(float("nan"),)), "radii"),
        (dict(eps=(float("inf"),)), "radii"),
        (dict(eps="0.5"), "list of radii"),
        (dict(eps=(True,)), "radii"),
    ]:
        with pytest.raises(InputError, match=match) as err:
            ThreatModel(**bad)
        assert "\n" not in str(err.value)


def test_coercion_accepts_a_threat_model_a_norm_or_radii():
    tm = ThreatModel("linf", "all", (1 / 255,))
    assert ThreatModel.of(tm) is tm and ThreatModel.of(tm, [2 / 255]).eps == (2 / 255,)
    assert ThreatModel.of("l2", 0.5) == ThreatModel("l2", "ref", (0.5,))
    assert ThreatModel.of([1.0, 0.5]) == ThreatModel("l2", "ref", (0.5, 1.0))
    for bad in (None, 3, {"norm": "l2"}):
        with pytest.raises(InputError):
            ThreatModel.of(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="radius"):
        ThreatModel.of("l2", "abc")  # type: ignore[arg-type]


def test_linf_balls_certify_through_the_l2_ball_that_holds_them_and_json_round_trips():
    l2, linf = ThreatModel("l2", "ref", (0.5,)), ThreatModel("linf", "ref", (4 / 255,))
    assert l2.l2_radius(0.5, 12288) == 0.5 and linf.l2_radius(4 / 255, 12288) == pytest.approx(4 / 255 * 12288**0.5)
    for tm in (l2, linf, ThreatModel("l2", "all", (0.1, 0.2))):
        assert ThreatModel.from_json(tm.to_json()) == tm
    with pytest.raises(InputError, match="radii"):
        parse_eps("-1")


def test_radii_written_for_the_other_norm_are_refused_or_warned(capsys):
    """``--norm linf --eps 8`` (meant 8/255) is refused in one line; ``--norm l2 --eps 8/255``
    runs with a one-line warning; ordinary radii say nothing."""
    from conftest import run_cli

    with pytest.raises(InputError, match="did you mean 8/255"):
        ThreatModel("linf", "ref", (8,))
    assert ThreatModel("l2", "ref", (8 / 255,)).implausible().startswith("warning: l2 radius 8/255")
    assert ThreatModel("l2", "ref", (36 / 255, 0.5)).implausible() is None
    assert ThreatModel("linf", "ref", (8 / 255,)).implausible() is None
    argv = ["audit", "--metric", "l2", "--data", "mini", "--limit", "2", "--steps", "1", "--attacks", "pgd"]
    assert run_cli([*argv, "--norm", "linf", "--eps", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "8/255" in err
    assert run_cli([*argv, "--norm", "l2", "--eps", "8/255"]) == 0
    assert capsys.readouterr().err.count("warning: l2 radius 8/255") == 1
