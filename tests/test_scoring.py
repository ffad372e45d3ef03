"""The 2AFC score (robustsim.scoring)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustsim.scoring import two_afc_per_triplet, two_afc_score


def test_hand_computed_cases():
    d0 = torch.tensor([1.0, 1.0, 2.0, 3.0])
    d1 = torch.tensor([0.5, 2.0, 2.0, 1.0])
    p = torch.tensor([1.0, 1.0, 0.8, 0.7])
    # picks x1 (p=1) -> 1; picks x0 (p=1) -> 0; tie -> 0.5; picks x1 (p=0.7) -> 0.7
    assert two_afc_per_triplet(d0, d1, p).tolist() == pytest.approx([1.0, 0.0, 0.5, 0.7])
    assert two_afc_score(d0, d1, p) == pytest.approx((1 + 0 + 0.5 + 0.7) / 4)


def test_soft_label_picks_x0():
    assert two_afc_score(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.3])) == pytest.approx(0.7)


def test_shape_errors():
    with pytest.raises(ValueError, match="equal shapes"):
        two_afc_score(torch.zeros(2), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="no triplets"):
        two_afc_score(torch.zeros(0), torch.zeros(0), torch.zeros(0))


floats = st.floats(0, 10, allow_nan=False)


@given(st.lists(st.tuples(floats, floats, st.floats(0, 1)), min_size=1, max_size=30))
def test_properties(rows):
    d0, d1, p = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows, strict=True))
    s = two_afc_score(d0, d1, p)
    assert 0.0 <= s <= 1.0
    # relabelling x0 <-> x1 with p -> 1 - p leaves the score unchanged
    assert two_afc_score(d1, d0, 1 - p) == pytest.approx(s)
    # a metric plus its mirror always sum to 1 per triplet (or 0.5 + 0.5 on ties)
    per = two_afc_per_triplet(d0, d1, p) + two_afc_per_triplet(d1, d0, p)
    assert torch.allclose(per, torch.ones_like(per))
    # a score is never better than the per-triplet best of the two choices
    assert s <= float(torch.maximum(p, 1 - p).mean()) + 1e-9
