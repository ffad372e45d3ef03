"""Fuzzing the CLI in-process: whatever the CSV, spec, option value or checkpoint config,
``robustsim`` exits 0 or 2, prints no traceback and leaves no partial output file."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import random_image, run_cli, save_png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CELLS = st.sampled_from(
    [
        "r0.png",
        "a0.png",
        "b0.png",
        "missing.png",
        "../x.png",
        "/etc/passwd",
        "",
        "0",
        "1",
        "0.5",
        "2",
        "-1",
        "nan",
        "inf",
        "1e309",
        "é.png",
        '"q,uoted"',
        "r0.png\x00",
        " ",
        "a0.png,b0.png",
    ]
)
HEADERS = st.sampled_from(["ref,x0,x1,p", "ref,x0,x1", "x0,ref,p,x1", "ref,x0,x1,p,group", "", "ref;x0;x1;p"])


@pytest.fixture(scope="module")
def images() -> Path:
    root = Path(tempfile.mkdtemp(prefix="rs-fuzz-"))
    rng = np.random.default_rng(0)
    for k in ("r0", "a0", "b0"):
        save_png(root / f"{k}.png", random_image(rng, 16))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def check(argv: list[str], capsys, out: Path | None = None) -> int:
    code = run_cli(argv)
    captured = capsys.readouterr()
    assert code in (0, 2), (argv, code, captured.err[-2000:])
    assert "Traceback" not in captured.out + captured.err, (argv, captured.err[-2000:])
    if out is not None:
        partial = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
        assert not partial, partial
        if code == 0:
            json.loads(out.read_text())
        else:
            assert not out.exists()
    return code


@FUZZ
@given(header=HEADERS, rows=st.lists(st.lists(CELLS, min_size=0, max_size=6), max_size=5), binary=st.booleans())
def test_any_csv_exits_0_or_2(images, capsys, header, rows, binary):
    text = "\n".join([header, *(",".join(r) for r in rows)]) + "\n"
    csv = images / "fuzz.csv"
    csv.write_bytes(text.encode("latin-1", "replace") if binary else text.encode("utf-8", "replace"))
    out = images / "out.json"
    out.unlink(missing_ok=True)
    check(["score", "--metric", "l2", "--data", f"csv:{csv}", "--json", str(out), "--device", "cpu"], capsys, out)


SPEC_PARTS = st.sampled_from(["mini", "nights", "bapps", "csv", "vsd", "", "test", "val", "train", "nope", "cnn,x"])


@FUZZ
@given(parts=st.lists(SPEC_PARTS, min_size=1, max_size=4), path=st.sampled_from(["", "/nonexistent", "IMAGES"]))
def test_any_data_spec_exits_0_or_2(images, capsys, parts, path):
    spec = ":".join(p if p != "IMAGES" else str(images) for p in [parts[0], path, *parts[1:]] if p != "")
    check(["score", "--metric", "l2", "--data", spec, "--limit", "4", "--device", "cpu"], capsys)


OPTION_VALUES = st.sampled_from(
    [
        "0",
        "1",
        "-1",
        "2",
        "1e23",
        "1e309",
        "nan",
        "inf",
        "-inf",
        "abc",
        "",
        ",",
        "1/0",
        "36/255",
        "0.5,1",
        "99999999999999999999",
        "cuda:9",
        "meta",
        "mps",
        "cpu",
        "auto",
        "foolbox:Attack",
        "pgd",
        "apgd-ce,nope",
    ]
)


@FUZZ
@given(
    option=st.sampled_from(["--eps", "--batch-size", "--limit", "--device", "--steps", "--restarts", "--attacks"]),
    value=OPTION_VALUES,
)
def test_any_audit_option_value_exits_0_or_2(images, capsys, option, value):
    csv = images / "ok.csv"
    csv.write_text("ref,x0,x1,p\nr0.png,a0.png,b0.png,1\n")
    argv = ["audit", "--metric", "l2", "--data", f"csv:{csv}", "--steps", "1", "--device", "cpu", option, value]
    check(argv, capsys)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
MODEL_KEYS = st.sampled_from(["arch", "preset", "layers", "embed_dim", "input_size", "convs", "channels", "width"])


@FUZZ
@given(
    edits=st.dictionaries(MODEL_KEYS, JSON_VALUES | st.integers(-5, 10**10), max_size=3),
    top=st.sampled_from(["edit", "null", "list", "no-model", "model-list"]),
)
def test_any_checkpoint_config_exits_0_or_2(images, capsys, tmp_path_factory, edits, top):
    from robustsim.zoo import shipped_checkpoints

    src = next(p for p in shipped_checkpoints() if p.name == "lipsim-nano")
    ckpt = tmp_path_factory.mktemp("ckpt") / "c"
    shutil.copytree(src, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    if top == "edit":
        cfg["model"].update(edits)
    elif top == "null":
        cfg = None
    elif top == "list":
        cfg = [cfg]
    elif top == "no-model":
        cfg.pop("model")
    else:
        cfg["model"] = list(edits)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    check(["score", "--metric", str(ckpt), "--data", "mini", "--limit", "2", "--device", "cpu"], capsys)
