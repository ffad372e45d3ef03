"""Bench protocols as data (robustsim.bench.protocol): versioned, hashed, described in words, and looked up by
name with a one-line error."""

from __future__ import annotations

import dataclasses
import json

import pytest

from robustsim.bench.protocol import PROTOCOLS, get_protocol
from robustsim.errors import RobustsimError


def test_every_protocol_is_json_with_a_stable_distinct_digest():
    digests = {name: p.digest() for name, p in PROTOCOLS.items()}
    assert len(set(digests.values())) == len(digests)
    for p in PROTOCOLS.values():
        assert json.loads(json.dumps(p.to_json())) == p.to_json() and p.digest() == get_protocol(p.name).digest()


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_any_change_of_a_protocol_changes_its_digest_and_its_text_names_everything(name):
    p = get_protocol(name)
    for change in (
        dict(steps=p.steps + 1),
        dict(limit=7),
        dict(attacks=(*p.attacks, "pgd")),
        dict(version=p.version + 1),
    ):
        assert dataclasses.replace(p, **change).digest() != p.digest()
    text = p.describe()
    assert all(a in text for a in p.attacks) and f"{p.steps} steps" in text and f"v{p.version}" in text
    for tm in p.threat_models:
        assert all(label in text for label in tm.labels())
    assert "36/255" in text and ("all" in text if p.limit is None else f"first {p.limit}" in text)


def test_an_unknown_protocol_names_the_choices():
    with pytest.raises(RobustsimError, match="quick") as err:
        get_protocol("fast")
    assert "\n" not in str(err.value)
