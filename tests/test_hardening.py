"""Issue 18: no silent wrong result, no destroyed file, bounded memory on any input.

One test (or parametrised family) per class of failure, each written so the examples seen in the
probes would fail it before the fix.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_image, run_cli, save_png
from PIL import Image

from robustsim.cache import build_cached, verified_file
from robustsim.data import open_triplets
from robustsim.data.images import load_image
from robustsim.errors import DataError, RobustsimError, WeightsError
from robustsim.io import LOCK_NAME, OutputDir, write_json


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def csv_set(tmp_path: Path) -> Path:
    """A 4-triplet CSV set of 16 px images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    rows = ["ref,x0,x1,p"]
    for i in range(4):
        for k in ("r", "a", "b"):
            save_png(root / f"{k}{i}.png", random_image(rng, 16))
        rows.append(f"r{i}.png,a{i}.png,b{i}.png,{i % 2}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


# 1. Outputs never destroy what they replace ----------------------------------------------------


def _special_nodes(tmp_path: Path) -> dict[str, Path]:
    nodes = {}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    nodes["FIFO"] = fifo
    dev = tmp_path / "null-copy"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        nodes["character device"] = dev
    except (PermissionError, OSError):
        pass
    folder = tmp_path / "a-folder"
    folder.mkdir()
    nodes["directory"] = folder
    return nodes


def _commands(csv: Path, out: Path) -> dict[str, list[str]]:
    data = f"csv:{csv}"
    return {
        "score --json": ["score", "--metric", "l2", "--data", data, "--json", str(out)],
        "certify --json": ["certify", "--metric", "lipsim-nano", "--data", data, "--json", str(out)],
        "certify --plot": ["certify", "--metric", "lipsim-nano", "--data", data, "--plot", str(out)],
    }


@pytest.mark.parametrize("command", ["score --json", "certify --json", "certify --plot"])
def test_outputs_refuse_devices_fifos_and_folders_and_leave_them_intact(command, csv_set, tmp_path, capsys):
    for kind, node in _special_nodes(tmp_path).items():
        before = os.lstat(node)
        code, _, err = run(_commands(csv_set, node)[command], capsys)
        assert code == 2, (kind, err)
        assert kind in one_error_line(err)
        after = os.lstat(node)
        assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino


def test_plot_out_and_checkpoints_follow_the_same_rule(tmp_path, capsys):
    report = tmp_path / "c.json"
    assert run_cli(["certify", "--metric", "lipsim-nano", "--data", "mini", "--limit", "8", "--json", str(report)]) == 0
    fifo = tmp_path / "fig.png"
    os.mkfifo(fifo)
    code, _, err = run(["plot", str(report), "--out", str(fifo)], capsys)
    assert code == 2 and "FIFO" in one_error_line(err) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    from robustsim.models.checkpoint import save_checkpoint
    from robustsim.models.lipsim import LipSimNet

    blocker = tmp_path / "ckpt"
    blocker.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a checkpoint folder"):
        save_checkpoint(blocker, LipSimNet("nano", embed_dim=8, input_size=16))
    assert blocker.read_text() == "not a checkpoint"


def test_a_symlinked_output_is_written_through_and_stays_a_link(csv_set, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert run_cli(["score", "--metric", "l2", "--data", f"csv:{csv_set}", "--json", str(link)]) == 0
    assert link.is_symlink() and json.loads(target.read_text())["results"][0]["n"] == 4


def test_unwritable_or_file_parent_fails_before_any_work(csv_set, tmp_path, capsys, monkeypatch):
    import robustsim.evaluate as evaluate

    calls = []
    real = evaluate.evaluate_2afc
    monkeypatch.setattr(evaluate, "evaluate_2afc", lambda *a, **k: calls.append(1) or real(*a, **k))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    bad = [a_file / "out.json"]
    if not os.access(ro, os.W_OK):  # root can write anywhere; the read-only case then cannot be shown
        bad.append(ro / "out.json")
    for path in bad:
        code, _, err = run(["score", "--metric", "l2", "--data", f"csv:{csv_set}", "--json", str(path)], capsys)
        assert code == 2 and str(path) in one_error_line(err)
    code, _, err = run(["audit", "--metric", "l2", "--data", f"csv:{csv_set}", "--out", str(a_file / "d")], capsys)
    assert code == 2 and "not a folder" in one_error_line(err)
    assert calls == []


def test_out_holding_a_report_needs_overwrite_and_a_live_lock_blocks_a_second_run(csv_set, tmp_path, capsys):
    out = tmp_path / "audit"
    argv = ["audit", "--metric", "l2", "--data", f"csv:{csv_set}", "--steps", "2", "--out", str(out)]
    assert run_cli(argv) == 0
    first = (out / "report.json").read_text()
    code, _, err = run(argv, capsys)
    assert code == 2 and "--overwrite" in one_error_line(err)
    assert (out / "report.json").read_text() == first
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(str(holder.pid))
        code, _, err = run([*argv, "--overwrite"], capsys)
        assert code == 2 and f"in use by process {holder.pid}" in one_error_line(err)
    finally:
        holder.kill()
        holder.wait()
    assert run_cli([*argv, "--overwrite"]) == 0  # the holder is gone: its stale lock is taken over
    assert not (out / LOCK_NAME).exists()


def test_output_dir_claims_nest_within_one_process(tmp_path):
    with OutputDir(tmp_path / "run", ("report.json",)) as out, OutputDir(out, ("report.json",)):
        (out / "report.json").write_text("{}")  # the inner claim does not refuse its own run
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
    assert not (out / LOCK_NAME).exists()


def test_killed_checkpoint_saves_are_cleaned_and_the_log_truncated_on_resume(tmp_path):
    from robustsim.train.loop import _truncate_log

    from robustsim.models.checkpoint import clean_orphans, recover_checkpoint, save_checkpoint
    from robustsim.models.lipsim import LipSimNet

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


# 2. Caches are checked, never trusted ----------------------------------------------------------


def test_flipped_mini_labels_are_detected_and_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTSIM_CACHE", str(tmp_path / "cache"))
    clean = open_triplets("mini", limit=200)
    p_file = next((tmp_path / "cache").glob("mini-*/test_p.npy"))
    np.save(p_file, 1 - np.load(p_file))  # flip every label
    again = open_triplets("mini", limit=200)
    assert "failed verification" in capsys.readouterr().err
    assert all(float(again[i]["p"]) == float(clean[i]["p"]) for i in range(200))


def test_a_cache_folder_without_manifest_is_rebuilt_not_wedged(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTSIM_CACHE", str(tmp_path))
    builds = []

    def write(folder: Path) -> dict:
        builds.append(1)
        (folder / "a.bin").write_bytes(b"payload")
        return {}

    root = build_cached("thing", "abc", write)
    assert build_cached("thing", "abc", write) == root and len(builds) == 1
    (root / "manifest.json").unlink()
    assert (build_cached("thing", "abc", write) / "a.bin").read_bytes() == b"payload" and len(builds) == 2
    (root / "a.bin").write_bytes(b"")  # a zero-byte file
    build_cached("thing", "abc", write)
    assert len(builds) == 3 and verified_file(
        root / "a.bin", json.loads((root / "manifest.json").read_text())["files"]["a.bin"]
    )


def test_dataset_identity_follows_content_not_the_spec_string(tmp_path):
    rng = np.random.default_rng(3)
    ids = []
    for name in ("one", "two"):
        root = tmp_path / name
        for k in ("r", "a", "b"):
            save_png(root / f"{k}.png", random_image(rng, 8))
        (root / "data.csv").write_text("ref,x0,x1,p\nr.png,a.png,b.png,1\n")
        ids.append(open_triplets(f"csv:{root / 'data.csv'}").identity)
    assert ids[0] != ids[1]
    save_png(tmp_path / "one" / "r.png", random_image(rng, 8))
    os.utime(tmp_path / "one" / "r.png", ns=(1, 1))
    assert open_triplets(f"csv:{tmp_path / 'one' / 'data.csv'}").identity != ids[0]


def test_an_empty_embedding_cache_file_is_recomputed(tmp_path):
    from robustsim.data.imageset import ArrayImages
    from robustsim.metrics import load_metric
    from robustsim.metrics.cache import cached_embeddings

    metric = load_metric("lipsim-nano")
    images = ArrayImages(np.random.default_rng(0).integers(0, 255, (6, 3, 64, 64), dtype=np.uint8), None, "t", "t")
    first = np.array(cached_embeddings(metric, images, tmp_path, progress=False))
    (cache_file,) = tmp_path.glob("emb-*.npy")
    cache_file.write_bytes(b"")
    assert np.allclose(cached_embeddings(metric, images, tmp_path, progress=False), first)


# 3. Labels and pixels are what they claim ------------------------------------------------------


NIGHTS_HEADER = "id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet"


def _nights(tmp_path: Path, votes: list[tuple[str, str, str]]) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "nights"
    rows = [NIGHTS_HEADER]
    for i, (left, right, n) in enumerate(votes):
        for sub in (f"ref/{i}.png", f"distort/{i}_0.png", f"distort/{i}_1.png"):
            save_png(root / sub, random_image(rng, 8))
        rows.append(f"{i},{left},{right},{n},ref/{i}.png,distort/{i}_0.png,distort/{i}_1.png,test,True")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def test_nights_votes_are_read_by_the_votes_column(tmp_path):
    root = _nights(tmp_path, [("5", "1", "6"), ("0", "1", "6"), ("2", "4", "6"), ("1", "0", "7")])
    assert [round(float(t["p"]), 4) for t in open_triplets(f"nights:{root}")] == [
        round(1 / 6, 4),
        1.0,
        round(4 / 6, 4),
        0.0,
    ]


@pytest.mark.parametrize(
    "row, match",
    [
        (("0", "7", "6"), "exceeds votes"),
        (("-1", "7", "6"), "negative vote"),
        (("0", "nan", "6"), "finite"),
        (("0", "1.5", "6"), "neither votes"),
        (("3", "3", "-6"), "positive count"),
    ],
)
def test_bad_nights_rows_are_refused_with_their_line(tmp_path, capsys, row, match):
    root = _nights(tmp_path, [("0", "1", "6"), row])
    code, _, err = run(["score", "--metric", "l2", "--data", f"nights:{root}"], capsys)
    line = one_error_line(err)
    assert code == 2 and match in line and "data.csv:3" in line


@pytest.mark.parametrize("judgement", [1.5, -0.2, float("nan")])
def test_bad_bapps_judgements_are_refused(bapps_dir, judgement, capsys):
    np.save(bapps_dir / "2afc" / "val" / "cnn" / "judge" / "000001.npy", np.array([judgement], dtype=np.float32))
    code, _, err = run(["score", "--metric", "l2", "--data", f"bapps:{bapps_dir}:val"], capsys)
    assert code == 2 and "outside [0, 1]" in one_error_line(err)


def test_16_bit_and_float_images_load_by_their_real_range(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 127.5, dtype=np.float32), mode="F").save(tmp_path / "f255.tif")
    for name in ("g16.png", "f.tif", "f255.tif"):
        x = load_image(tmp_path / name)
        assert x.shape == (3, 8, 8) and torch.allclose(x, torch.full_like(x, 0.5), atol=1e-4), name
    assert torch.allclose(load_image(tmp_path / "g16.png", 4), torch.full((3, 4, 4), 0.5), atol=1e-4)
    Image.fromarray(np.full((8, 8), 1e6, dtype=np.float32), mode="F").save(tmp_path / "huge.tif")
    with pytest.raises(DataError, match="range is unknown"):
        load_image(tmp_path / "huge.tif")


def test_nan_weights_are_refused_and_json_stays_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    from robustsim.metrics import load_metric
    from robustsim.metrics.registry import shipped_checkpoints

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


@pytest.mark.parametrize("name", ["l2", "ssim", "lipsim-nano", "effnet-lite0"])
def test_float64_input_is_accepted_by_every_metric(name):
    from robustsim.metrics import load_metric

    m = load_metric(name)
    x, y = torch.rand(2, 3, 64, 64, dtype=torch.float64), torch.rand(2, 3, 64, 64, dtype=torch.float64)
    assert torch.allclose(m(x, y), m(x.float(), y.float()), atol=1e-6)


# 4. Bounded resources on small inputs -----------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A small PNG file whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_oversized_images_fail_on_their_header(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 50000, 50000)
    with pytest.raises(DataError, match="bomb.png"):
        load_image(bomb)
    save_png(tmp_path / "small.png", random_image(np.random.default_rng(0), 40))
    monkeypatch.setenv("ROBUSTSIM_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match="40x40 pixels, over the 1000 cap"):
        load_image(tmp_path / "small.png")


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


def test_limit_stops_reading_the_annotation_file(csv_set):
    with csv_set.open("a") as f:
        f.write("r0.png,a0.png,b0.png,7\n")  # a bad row after the limit is never parsed
    assert len(open_triplets(f"csv:{csv_set}", limit=3)) == 3
    with pytest.raises(DataError, match="outside"):
        open_triplets(f"csv:{csv_set}")


# 5. Every remaining traceback becomes one line -------------------------------------------------


def _bad_inputs(tmp_path: Path, csv_set: Path, bapps_dir: Path) -> list[tuple[list[str], str]]:
    short = tmp_path / "short.csv"
    short.write_text("ref,x0,x1,p\nr0.png,a0.png\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("ref,x0,x1,p\nr\xe9.png,a.png,b.png,1\n".encode("latin-1"))
    mixed = csv_set.parent / "mixed.csv"
    save_png(csv_set.parent / "big.png", random_image(np.random.default_rng(1), 24))
    mixed.write_text("ref,x0,x1,p\nr0.png,a0.png,b0.png,1\nbig.png,big.png,big.png,0\n")
    outside = csv_set.parent / "outside.csv"
    outside.write_text("ref,x0,x1,p\n../../../etc/passwd,a0.png,b0.png,1\n")
    (bapps_dir / "2afc" / "val" / "color" / "p0").mkdir(parents=True)
    bad_report = tmp_path / "bad-report.json"
    bad_report.write_text('{"kind": "audit", "metric": "m", "data": "d", "eps": [0.5], "robust": "x"}')
    return [
        (["score", "--metric", "l2", "--data", f"csv:{short}"], "too few fields"),
        (["score", "--metric", "l2", "--data", f"csv:{latin}"], "not UTF-8"),
        (["score", "--metric", "l2", "--data", f"csv:{mixed}"], "different sizes"),
        (["score", "--metric", "l2", "--data", f"csv:{outside}"], "--allow-outside"),
        (["score", "--metric", "l2", "--data", f"bapps:{bapps_dir}:val:color"], "does not exist"),
        (["score", "--metric", "l2", "--device", "meta"], "not supported"),
        (["score", "--metric", "l2", "--device", "mps"], "not supported"),
        (["score", "--metric", "l2", "--batch-size", "1e23"], "batch-size"),
        (["audit", "--metric", "l2", "--eps", "1e309"], "finite"),
        (["audit", "--metric", "l2", "--attacks", "foolbox:Attack"], "no usable attack"),
        (["audit", "--metric", "l2", "--attacks", "foolbox:LinfPGD"], "pass --norm linf"),
        (["plot", str(bad_report), "--out", str(tmp_path / "x.png")], "'robust' must list"),
        (["plot", str(bad_report), "--out", str(tmp_path / "x.txt")], "figure suffix"),
        (["score", "--metric", "l2\nfake result line", "--data", f"csv:{csv_set}"], "control character"),
    ]


def test_known_bad_inputs_are_one_line_and_exit_2(tmp_path, csv_set, bapps_dir, capsys):
    for argv, match in _bad_inputs(tmp_path, csv_set, bapps_dir):
        code, out, err = run(argv, capsys)
        assert code == 2, (argv, err)
        assert match in err and "Traceback" not in err + out, (argv, err)
    with pytest.raises(RobustsimError, match="at least 3x3"):
        from robustsim.metrics import load_metric

        load_metric("ssim")(torch.rand(1, 3, 1, 1), torch.rand(1, 3, 1, 1))


def test_allow_outside_lets_a_csv_name_other_folders(csv_set, tmp_path):
    other = tmp_path / "other" / "elsewhere.csv"
    other.parent.mkdir()
    other.write_text(f"ref,x0,x1,p\n{csv_set.parent / 'r0.png'},{csv_set.parent / 'a0.png'},../set/b0.png,1\n")
    assert run_cli(["score", "--metric", "l2", "--data", f"csv:{other}"]) == 2
    assert run_cli(["score", "--metric", "l2", "--data", f"csv:{other}", "--allow-outside"]) == 0


def test_a_missing_optional_package_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips now fails as if not installed
    code, _, err = run(["score", "--metric", "lpips-alex", "--data", "mini", "--limit", "2"], capsys)
    assert code == 2 and "robustsim[zoo]" in one_error_line(err)


def test_resume_refuses_truncated_state_and_a_negative_step(tmp_path, capsys):
    from robustsim.train.loop import RunConfig
    from safetensors.torch import save_file

    from robustsim.models.checkpoint import save_checkpoint
    from robustsim.models.lipsim import LipSimNet

    net = LipSimNet("nano", embed_dim=8, input_size=16)
    run_dir = tmp_path / "run"
    cfg = RunConfig(out=str(run_dir), epochs=1, batch_size=4)
    meta = {"training": {"global_step": -5, "config": {}, "optimizer": {"param_groups": [], "scalars": {}}}}
    save_checkpoint(run_dir / "last", net, meta, extra_tensors={"rng.torch": torch.get_rng_state()})
    from robustsim.train.loop import _resume

    opt = torch.optim.Adam(net.parameters())
    with pytest.raises(RobustsimError, match="global_step -5"):
        _resume(run_dir, net, opt, cfg, total=10)
    meta["training"]["global_step"] = 3
    save_checkpoint(run_dir / "last", net, meta, extra_tensors={"rng.torch": torch.get_rng_state()})
    state = run_dir / "last" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:40])
    with pytest.raises(RobustsimError, match="corrupt or truncated"):
        _resume(run_dir, net, opt, cfg, total=10)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "unused.safetensors"))
