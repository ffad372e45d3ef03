"""Mixed precision for the attack steps (robustsim/precision.py): bf16 autocast runs on a CPU too, so the rules are
tested here: the steps may be bf16, every decision and re-check is float32."""

from __future__ import annotations

import pytest
import torch

from robustsim.attacks import make_attack
from robustsim.attacks.twoafc import TwoAFCClassifier, labels_from_p, margin
from robustsim.audit import run_audit
from robustsim.data import open_triplets
from robustsim.errors import InputError
from robustsim.precision import resolve_precision
from robustsim.threat import ThreatModel
from robustsim.zoo import load_metric

THREAT = ThreatModel("l2", "ref", (0.5, 1.0))


@pytest.fixture(scope="module")
def setting():
    torch.set_num_threads(1)
    return load_metric("lipsim-nano"), open_triplets("mini:test", limit=64)


def test_a_bf16_attack_reports_only_breaks_that_float32_confirms(setting):
    metric, data = setting
    att = make_attack("apgd-ce", THREAT, steps=10, precision="bf16")
    res = att(metric, data, THREAT, progress=False, n_examples=len(data))
    assert res is not None
    ref, x0, x1, adv = (res.examples[k] for k in ("ref", "x0", "x1", "adv"))
    y, _ = labels_from_p(torch.stack([data[int(i)]["p"] for i in res.examples["index"]]))
    clf = TwoAFCClassifier(metric, ref, x0, x1)  # float32 weights, no autocast
    for i, e in enumerate(THREAT.eps):
        broken = res.clean & ~res.robust[i]
        assert broken.sum() >= 5
        with torch.no_grad():
            flipped = margin(clf(adv[i]), y) <= 0
        moved = (adv[i] - ref).flatten(1).norm(dim=1)
        assert flipped[broken].all() and (moved[broken] <= e * (1 + 1e-5)).all()
        assert adv.dtype == torch.float32


def test_a_bf16_audit_is_within_a_few_triplets_of_float32(setting):
    """Same attack, 64 mini:test triplets: bf16 steps can only find fewer breaks than exact ones would, and on mini
    they find nearly as many (measured 3 of 64 fewer at each radius); clean accuracy is identical (float32)."""
    metric, data = setting
    fp32 = run_audit(metric, data, THREAT, ["apgd-ce"], steps=10, progress=False)
    bf16 = run_audit(metric, data, THREAT, ["apgd-ce"], steps=10, precision="bf16", progress=False)
    assert fp32 is not None and bf16 is not None
    assert bf16.clean == fp32.clean and bf16.settings["precision"] == "bf16"
    assert bf16.robust == pytest.approx(fp32.robust, abs=0.1)


def test_precision_is_resolved_per_device_and_checked_in_one_line():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(InputError, match="fp16 autocast needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(InputError, match="precision must be one of"):
        resolve_precision("fp8", "cpu")


def test_a_metric_cast_to_bfloat16_can_be_attacked():
    """The classifier feeds every image through the metric's as_input (its dtype), so a bfloat16 copy of a metric,
    the shipped orthogonal one included, gives bfloat16 logits instead of a dtype error."""
    for name in ("lipsim-nano-aoc", "ssim"):
        m = load_metric(name).to(torch.bfloat16)
        x = torch.rand(2, 3, 64, 64)
        logits = TwoAFCClassifier(m, x, x.flip(0), x.roll(1, dims=2))(x)
        assert logits.shape == (2, 2) and torch.isfinite(logits.float()).all()
