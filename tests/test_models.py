"""Checkpoints (robustsim.models.checkpoint): interrupted saves cleaned, NaN weights refused, configs bounded
before anything is allocated."""

from __future__ import annotations

import json

import pytest
import torch

from robustsim.errors import WeightsError
from robustsim.io import write_json


def test_killed_checkpoint_saves_are_cleaned_and_the_log_truncated_on_resume(tmp_path):
    from robustsim.models.checkpoint import clean_orphans, recover_checkpoint, save_checkpoint
    from robustsim.models.lipsim import LipSimNet
    from robustsim.train.loop import _truncate_log

    net = LipSimNet("nano", embed_dim=8, input_size=16)
    last = save_checkpoint(tmp_path / "last", net, {"name": "x"})
    orphan = tmp_path / ".last.k1l2m3"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    clean_orphans(last)
    assert not orphan.exists() and last.is_dir()
    # a kill between the two renames of a save: last/ gone, the complete previous version is .last.old
    last.rename(tmp_path / ".last.old")
    clean_orphans(tmp_path / "last")  # keeps .last.old: it is the only complete copy
    assert recover_checkpoint(tmp_path / "last") == tmp_path / "last" and (tmp_path / "last" / "config.json").is_file()
    log = tmp_path / "log.jsonl"
    steps = [{"event": "start", "step": 0}] + [{"event": "step", "step": s} for s in (1, 2, 3, 4, 3, 4)]
    log.write_text("\n".join(json.dumps(r) for r in steps) + '\n{"event": "st')
    _truncate_log(log, 2)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [0, 1, 2]


def test_nan_weights_are_refused_and_json_stays_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    from robustsim.zoo import load_metric, shipped_checkpoints

    src = next(p for p in shipped_checkpoints() if p.name == "lipsim-nano")
    bad = tmp_path / "nan-ckpt"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    sd = load_file(str(src / "model.safetensors"))
    key = next(iter(sd))
    sd[key] = torch.full_like(sd[key], float("nan"))
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(WeightsError, match="NaN or inf"):
        load_metric(str(bad))
    out = write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")) == {
        "a": None,
        "b": [None, 1.0],
    }


@pytest.mark.parametrize(
    "model, match",
    [
        (
            {
                "arch": "lipsim",
                "preset": "custom",
                "layers": {"convs": 2, "channels": 8, "linears": 1, "width": 10**9},
                "embed_dim": 8,
                "input_size": 16,
            },
            "width must be an integer",
        ),
        (
            {
                "arch": "lipsim",
                "preset": "custom",
                "layers": {"convs": 2, "channels": 8, "linears": 1, "width": 60000},
                "embed_dim": 8,
                "input_size": 16,
            },
            "does not match its config",
        ),
        ({"arch": "lipsim", "preset": "nano", "embed_dim": -3, "input_size": 16}, "embed_dim must be"),
        ([], "not a robustsim checkpoint"),
    ],
)
def test_checkpoint_configs_are_checked_before_allocation(tmp_path, model, match):
    import tracemalloc

    from robustsim.models.checkpoint import load_net, save_checkpoint
    from robustsim.models.lipsim import LipSimNet

    ckpt = save_checkpoint(tmp_path / "c", LipSimNet("nano", embed_dim=8, input_size=16))
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"] = model
    (ckpt / "config.json").write_text(json.dumps(cfg))
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match=match):
            load_net(ckpt)
        assert tracemalloc.get_traced_memory()[1] < 50e6
    finally:
        tracemalloc.stop()
