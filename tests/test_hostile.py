"""Hostile names, planted links, forged state, unrepresentable numbers, full disks and FIFOs: what a
user types or leaves in a folder is data; a run writes only inside its --out folder, never through a link; state
that does not prove itself is recomputed with one warning line; every refusal is one line with exit 2."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import chrome, one_error_line, run, run_cli, save_png

from robustsim.models import LipSimNet, LipSimPreset, save_checkpoint

pytestmark = pytest.mark.xdist_group("hostile")
LINK = "[c](javascript:document.title=2)"
HOSTILE_NAME = "a|b | fake | 99 | $\\frac$ " + LINK  # a folder name (the CLI refuses control characters in names)


def _csv_named(folder: Path, name: str, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["ref,x0,x1,p"]
    for i in range(n):
        for k in ("r", "a", "b"):
            save_png(folder / f"{k}{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        rows.append(f"r{i}.png,a{i}.png,b{i}.png,{i % 2}")
    path = folder / name
    path.write_text("\n".join(rows) + "\n")
    return path


def _checkpoint(folder: Path, name: str) -> Path:
    torch.manual_seed(0)
    net = LipSimNet(LipSimPreset(1, 4, 1, 16), embed_dim=8, input_size=16).eval()
    return save_checkpoint(folder, net.freeze(), {"name": name})


def _links(html: str) -> list[str]:
    import re

    return re.findall(r'<a [^>]*href="([^"]*)"', html)


# injection and escape ---------------------------------------------------------------------------------------------


def test_a_data_file_name_with_markdown_and_mathtext_is_shown_as_text(tmp_path, capsys):
    """`--data 'csv:[c](javascript:...).csv'` made a link that ran script; `$\\frac$` in it failed the figure and
    left a partial report. Now the page holds no such link, the figure is written, the report is whole."""
    data = _csv_named(tmp_path / "set", f"$\\frac$ {LINK}.csv")
    out = tmp_path / "out"
    code, _, err = run(["certify", "--metric", "lipsim-nano", "--data", f"csv:{data}", "--out", str(out)], capsys)
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert all(h and "javascript" not in h for h in _links(page))
    assert "<code>" in page and "[c](javascript:document.title=2)" in page  # shown, literally
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "report.html", "certified.png"}


@pytest.mark.slow
def test_no_link_on_a_report_page_runs_script_in_a_browser(tmp_path, capsys):
    """A data file and a checkpoint (its config.json name, with a newline) named with a link: clicking every link
    of the audit page runs no script, and the name's newline injects no table."""
    data = _csv_named(tmp_path / "set", f"{LINK}.csv")
    ckpt = _checkpoint(tmp_path / "ck", f"{LINK}\n| fake | 99 |")
    out = tmp_path / "out"
    assert run_cli(["audit", "--metric", str(ckpt), "--data", f"csv:{data}", "--steps", "2", "--out", str(out)]) == 0
    browser = chrome()
    try:
        browser.get((out / "report.html").as_uri())
        title = browser.title
        from selenium.webdriver.common.by import By

        for a in browser.find_elements(By.TAG_NAME, "a"):
            a.click()
        assert browser.title == title != "2"
        assert len(browser.find_elements(By.TAG_NAME, "table")) == 1
    finally:
        browser.quit()


def test_a_metric_name_with_pipes_newlines_and_links_keeps_the_cards_columns(tmp_path, capsys):
    """`bench --metrics /abs/ckpt` wrote its cells into the checkpoint folder and its card beside it; a `|` in the
    name shifted the card's columns and a newline injected a row. Now: a checkpoint folder named with `|`, a newline,
    `$` and a link benches into --out alone, the leaderboard keeps its columns (the clean column holds the clean
    number) and its links stay inside --out."""
    ckpt = _checkpoint(tmp_path / "models" / HOSTILE_NAME, "plain")
    before = sorted(p.name for p in (tmp_path / "models").iterdir()), sorted(p.name for p in ckpt.iterdir())
    out = tmp_path / "bench"
    argv = ["--threads", "1", "bench", "--metrics", str(ckpt), "--data", "mini", "--limit", "4", "--out", str(out)]
    assert run_cli(argv) == 0
    after = sorted(p.name for p in (tmp_path / "models").iterdir()), sorted(p.name for p in ckpt.iterdir())
    assert after == before  # nothing beside or inside the checkpoint
    card = json.loads(next((out / "cards").glob("*.json")).read_text())
    board = (out / "leaderboard.md").read_text().splitlines()
    rows = [ln for ln in board if ln.startswith("| ")]
    from robustsim.html import _cells

    header = _cells(rows[0])
    assert len(rows) == 2 and len(_cells(rows[1])) == len(header)  # the header and one metric: no injected row
    assert _cells(rows[1])[header.index("clean")] == f"{100 * card['clean']:.1f}"
    page = (out / "leaderboard.html").read_text()
    assert _links(page) and all(not h.startswith(("javascript", "http")) for h in _links(page))
    for link in _links(page):
        assert (out / link).resolve().is_relative_to(out.resolve()) and (out / link).is_file()


# links planted in state folders -----------------------------------------------------------------------------------

AUDIT = [
    "--threads",
    "1",
    "audit",
    "--metric",
    "l2",
    "--data",
    "mini",
    "--limit",
    "8",
    "--steps",
    "2",
    "--eps",
    "0.5,1",
]


def test_a_link_planted_in_a_run_folder_is_refused_not_written_through(tmp_path, capsys):
    """`.resume/rank0` -> an outside folder, a bench cell -> an outside file, `cells/l2` -> an outside folder: each
    was written through (4 records, an overwritten file, 8 cells). Each is refused in one line, nothing outside
    changes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "resume-folder"
    (out / ".resume").mkdir(parents=True)
    (out / ".resume" / "rank0").symlink_to(elsewhere)
    code, _, err = run([*AUDIT, "--out", str(out)], capsys)
    assert code == 2 and "symbolic link" in one_error_line(err)
    for plant in ("cell-file", "cell-folder"):
        out = tmp_path / plant
        (out / "cells").mkdir(parents=True)
        if plant == "cell-folder":
            (out / "cells" / "l2").symlink_to(elsewhere)
        else:
            (out / "cells" / "l2").mkdir()
            (out / "cells" / "l2" / "clean.json").symlink_to(victim)
        code, _, err = run(["--threads", "1", "bench", "--metrics", "l2", "--limit", "4", "--out", str(out)], capsys)
        assert code == 2 and "symbolic link" in one_error_line(err)
    assert victim.read_text() == "keep me" and not list(elsewhere.iterdir())


def test_a_resume_record_that_is_a_link_is_neither_read_nor_written_through(tmp_path):
    from robustsim.errors import OutputError
    from robustsim.resume import BatchStore

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    store = BatchStore(tmp_path / "out" / ".resume" / "rank0", {"run": 1}, root=tmp_path / "out")
    items = torch.arange(4)
    store.save("part", items, {"rows": {}})
    record = next((tmp_path / "out" / ".resume" / "rank0").glob("*.pt"))
    record.unlink()
    record.symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        store.load("part", items)
    with pytest.raises(OutputError, match="symbolic link"):
        store.save("part", items, {"rows": {}})
    assert victim.read_text() == "keep me"


def test_a_resume_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".resume").write_text("not a folder")
    code, _, err = run([*AUDIT, "--out", str(out)], capsys)
    assert code == 2 and ".resume" in one_error_line(err)


# forged or foreign state ------------------------------------------------------------------------------------------


def test_forged_or_foreign_resume_records_are_recomputed_never_trusted(tmp_path, capsys):
    """A record whose robust rows were set to its clean ones (and its checksum redone) gave robust 75 % for 62.5 %;
    a record of an --eps 0.25,1 run copied under the name of the --eps 0.5,1 one was restored without a word. Each
    record now carries its own key and a signature (the secret stays in robustsim's cache folder) and is checked
    against its batch; one that fails is recomputed with one warning line, and the audit equals an honest one."""
    import io

    import robustsim
    from robustsim.audit import run_audit
    from robustsim.data import open_triplets
    from robustsim.threat import ThreatModel

    metric, data = robustsim.load_metric("l2"), open_triplets("mini:test", limit=16)
    threat = ThreatModel("l2", "ref", (0.5, 1.0))
    folder = tmp_path / "out" / ".resume"

    def audit():
        return run_audit(metric, data, threat, ["apgd-ce"], steps=3, batch_size=8, progress=False, resume=folder)

    honest = audit()
    records = sorted((folder / "rank0").glob("*.pt"))
    assert len(records) >= 2
    first, second = records[0], records[1]
    box = torch.load(first, weights_only=True)
    record = torch.load(io.BytesIO(box["payload"]), weights_only=True)
    record["rows"]["robust"] = record["rows"]["clean"].unsqueeze(0).clone()  # forged, consistent with its laws
    forged = io.BytesIO()
    torch.save(record, forged)
    torch.save({**box, "payload": forged.getvalue()}, first)
    shutil.copy(first, second)  # and a foreign record under another batch's name
    capsys.readouterr()
    again = audit()
    err = capsys.readouterr().err
    assert "edited or forged" in err and "not this batch's record" in err
    assert again.robust == honest.robust and again.per_triplet == honest.per_triplet
    for garbage in ({}, {"key": "x"}, b"\x00not torch"):
        (folder / "rank0" / records[0].name).write_bytes(garbage if isinstance(garbage, bytes) else b"")
        if isinstance(garbage, dict):
            torch.save(garbage, folder / "rank0" / records[0].name)
        assert audit().robust == honest.robust
    assert "recomputing its batch" in capsys.readouterr().err


def test_forged_bench_cells_are_recomputed(tmp_path, capsys):
    """A re-signed cell (the checksum is no secret) with robust 0.99 beside a per-triplet mean of 0.75, 1.5, -0.5,
    or clean below robust was shown as is. Each now fails its checks (ranges, per-triplet rows against the summary,
    certified <= robust <= clean) and is recomputed with one warning line."""
    from robustsim.bench.run import result_digest

    out = tmp_path / "bench"
    argv = ["--threads", "1", "bench", "--metrics", "l2", "--data", "mini", "--limit", "8", "--out", str(out)]
    assert run_cli(argv) == 0
    honest = json.loads((out / "cards" / "l2.json").read_text())
    cell = next(p for p in (out / "cells" / "l2").glob("*.json") if p.name.startswith("robust"))
    saved = json.loads(cell.read_text())
    for forged in ({"robust": 0.99}, {"robust": 1.5}, {"robust": -0.5}, {"clean": 0.0}):
        result = {**saved["result"], **forged}
        cell.write_text(json.dumps({**saved, "result": result, "sha256": result_digest(result)}))
        capsys.readouterr()
        assert run_cli(argv) == 0
        err = capsys.readouterr().err
        assert "recomputing it" in err, forged
        card = json.loads((out / "cards" / "l2.json").read_text())
        assert card["robust"] == honest["robust"] and card["clean"] == honest["clean"]


def test_a_cell_nested_too_deep_to_parse_is_recomputed(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--threads", "1", "bench", "--metrics", "l2", "--data", "mini", "--limit", "4", "--out", str(out)]
    assert run_cli(argv) == 0
    cell = next((out / "cells" / "l2").glob("clean*.json"))
    cell.write_text("[" * 100_000 + "]" * 100_000)
    capsys.readouterr()
    assert run_cli(argv) == 0
    err = capsys.readouterr().err
    assert "clean.json is not a cell record; recomputing it" in err and "RecursionError" not in err


# numbers a user can type, environments, pipes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, says",
    [
        (["certify", "--metric", "lipsim-nano", "--limit", "2", "--eps", "1e308"], "exceeds the diameter"),
        (["audit", "--metric", "l2", "--limit", "2", "--eps", "1e300"], "exceeds the diameter"),
        (["audit", "--metric", "l2", "--limit", "2", "--norm", "linf", "--eps", "1e308"], "linf radius"),
        (
            ["certify", "--method", "center-smoothing", "--metric", "ssim", "--limit", "2", "--eps", "0.1", "--delta",
             "1e-300"],
            "below what even",
        ),
        (
            ["certify", "--method", "center-smoothing", "--metric", "ssim", "--limit", "2", "--eps", "0.1", "--delta",
             "1e-160"],
            "below what even",
        ),
        (["train", "distill", "--lr", "nan"], "not a finite number"),
        (["train", "distill", "--lr", "inf"], "not a finite number"),
        (["train", "distill", "--warmup", "nan"], "not a finite number"),
        (["train", "finetune", "--margin", "nan"], "not a finite number"),
        (["train", "finetune", "--radius-weight", "inf"], "not a finite number"),
    ],
)  # fmt: skip
def test_numbers_the_code_cannot_represent_are_one_line(argv, says, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and says in one_error_line(err)


@pytest.mark.parametrize("name", ["WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"])
def test_an_environment_integer_that_is_not_one_is_one_line(name, monkeypatch, capsys):
    monkeypatch.setenv(name, "abc")
    code, _, err = run(["score", "--metric", "l2", "--limit", "2"], capsys)
    assert code == 2 and f"{name}='abc'" in one_error_line(err)


@pytest.mark.parametrize(
    "env, says",
    [
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR and MASTER_PORT unset"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT unset"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "not a process of WORLD_SIZE=2"),
        ({"RANK": "1"}, "not a process of WORLD_SIZE=1"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "99999"}, "is not a port"),
    ],
)
def test_torchrun_variables_left_over_in_a_shell_are_one_line(env, says, monkeypatch, capsys):
    """A leftover WORLD_SIZE / RANK without MASTER_ADDR was a ValueError from torch; the variables are checked
    together before any work."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run(["score", "--metric", "l2", "--limit", "2"], capsys)
    assert code == 2 and says in one_error_line(err)


def test_json_to_a_pipe_is_one_line_not_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "robustsim", "score", "--metric", "l2", "--limit", "2", "--json", "/dev/stdout"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "FIFO" in one_error_line(done.stderr)


# plot reads only regular files of robustsim's numbers ---------------------------------------------------------------


def test_plot_refuses_fifos_devices_and_numbers_out_of_range_in_one_line(tmp_path):
    fifo = tmp_path / "fifo" / "report.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    report = {"kind": "audit", "metric": "m", "data": "d", "norm": "l2", "eps": [0.5], "robust": [0.5]}
    bad = {
        "huge-eps.json": {**report, "eps": [1e308]},
        "huge-robust.json": {**report, "robust": [1e308]},
        "negative.json": {**report, "robust": [-5]},
    }
    for name, body in bad.items():
        (tmp_path / name).write_text(json.dumps(body))
    (tmp_path / "nan.json").write_text(
        '{"kind": "certify", "metric": "m", "data": "d", "curve": [{"eps": 0.1, "certified": 0.5}], '
        '"triplets": [{"radius": NaN}]}'
    )
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    for path in [fifo.parent, zero, *(tmp_path / n for n in bad), tmp_path / "nan.json", tmp_path / "deep.json"]:
        done = subprocess.run(
            [sys.executable, "-m", "robustsim", "plot", str(path), "--out", str(tmp_path / "o.png")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, (path, done.stderr)
        one_error_line(done.stderr)
    assert not (tmp_path / "o.png").exists()


# full disks --------------------------------------------------------------------------------------------------------


def _small_fs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=4k tmpfs "$d"'], capture_output=True
    )
    return probe.returncode == 0


SMALL_FS = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'


@pytest.mark.skipif(not _small_fs_works(), reason="no user namespace with a mountable tmpfs here")
@pytest.mark.parametrize(
    "size, argv",
    [
        ("4k", ["score", "--metric", "l2", "--limit", "300", "--json", "{fs}/s.json"]),
        ("24k", ["certify", "--metric", "lipsim-nano", "--limit", "64", "--out", "{fs}/out"]),
        ("8k", ["audit", "--metric", "l2", "--limit", "64", "--steps", "2", "--out", "{fs}/out"]),
        ("40k", ["train", "distill", "--teacher", "effnet-lite0", "--student", "nano", "--input-size", "32", "--limit",
                 "16", "--batch-size", "8", "--max-steps", "1", "--val-images", "", "--eval-data", "", "--device",
                 "cpu", "--out", "{fs}/out"]),
    ],
    ids=["score", "certify", "audit", "train (a checkpoint: SafetensorError)"],
)
def test_a_full_disk_is_one_line_and_leaves_no_partial_output(size, argv, tmp_path):
    """On a real tmpfs of a few KB (a user namespace's mount): `score --json` raised OSError 28, `certify --out` left
    report.json + report.md, `audit --out` raised torch's inline_container error. Each is now one line, exit 2, and
    nothing partial is left (no report file, no temporary file; the audit keeps its whole records to continue)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    cmd = [a.replace("{fs}", str(fs)) for a in argv]
    script = SMALL_FS + '; code=$?; cd "$FS" 2>/dev/null && find . -mindepth 1 > "$LISTING"; exit $code'
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script.replace("exec ", ""), "sh", size, str(fs), sys.executable, "-m",
         "robustsim", *cmd],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "FS": str(fs), "LISTING": str(tmp_path / "listing")},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "No space left" in one_error_line(done.stderr)
    left = (tmp_path / "listing").read_text().split() if (tmp_path / "listing").exists() else []
    # what may stay: the lock-free folder and .resume with whole records (the same command continues from them)
    names = [Path(f).name for f in left]
    assert not [n for n in names if n.startswith("report") or n.endswith(".png")], left
    assert not [n for n in names if n.startswith(".") and n not in (".resume",)], left  # no temporary file


def test_a_failed_write_leaves_no_partial_report(tmp_path, monkeypatch):
    """The same law without a tmpfs: a figure whose write fails (ENOSPC) leaves the folder as it was."""
    import matplotlib.figure

    from robustsim.errors import OutputError
    from robustsim.reports import write_report

    class Report:
        def to_json(self):
            return {"kind": "audit"}

        def markdown(self):
            return "# r\n"

        def figures(self):
            import matplotlib.pyplot as plt

            return {"a.png": plt.figure()}

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="No space left"):
        write_report(Report(), out)
    assert list(out.iterdir()) == []


# a smoothed audit that abstains, weights outside their folder --------------------------------------------------------


def test_an_audit_whose_smoothed_predictions_all_abstain_says_so(capsys):
    code, out, err = run(
        ["audit", "--metric", "ssim", "--limit", "8", "--smoothing", "0.1", "--smoothing-n", "8", "--steps", "2",
         "--eps", "0.25"], capsys)  # fmt: skip
    assert code == 0 and "abstained on 100.0 %" in out and "raise --smoothing-n" in err


def test_weights_live_under_the_configured_folder_and_unpinned_bytes_are_refused(tmp_path, monkeypatch, capsys):
    """`weights add dists_weights.pt random.bin` installed random bytes into torch's hub folder (not under
    ROBUSTSIM_WEIGHTS) and pinned them. A file with no published hash and no first download is now refused before
    anything is installed; with --trust it goes under ROBUSTSIM_WEIGHTS and its hash becomes the pin."""
    weights, hub = tmp_path / "weights", tmp_path / "torch"
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS", str(weights))
    monkeypatch.setenv("TORCH_HOME", str(hub))
    random = tmp_path / "random.bin"
    random.write_bytes(os.urandom(1000))
    code, _, err = run(["weights", "add", "dists_weights.pt", str(random)], capsys)
    assert code == 2 and "nothing was installed" in one_error_line(err)
    assert not list(tmp_path.rglob("dists_weights.pt"))
    code, out, _ = run(["weights", "add", "dists_weights.pt", str(random), "--trust"], capsys)
    assert code == 0 and (weights / "dists_weights.pt").read_bytes() == random.read_bytes()
    assert not hub.exists() or not list(hub.rglob("dists_weights.pt"))


def _key_of(cache: Path) -> bytes:
    from robustsim.resume import _secret

    return _secret()


@pytest.mark.parametrize(
    "plant, says",
    [
        (lambda p: (p.write_bytes(b"k" * 32), p.chmod(0o644)), "can be read or written by other users"),
        (lambda p: (p.write_bytes(b""), p.chmod(0o600)), "holds 0 bytes"),
        (lambda p: os.mkfifo(p, 0o600), "not a regular file"),
        (lambda p: p.symlink_to("/dev/zero"), "symbolic link"),
        pytest.param(
            lambda p: (p.write_bytes(b"k" * 32), p.chmod(0o600), os.chown(p, 65534, 65534)),
            "belongs to another user",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to a second uid needs root"),
        ),
    ],
    ids=["mode 644 (planted, or another user's)", "0 bytes", "a FIFO", "a link to /dev/zero", "owned by uid 65534"],
)
def test_a_resume_key_nobody_can_trust_is_one_warning_and_a_fresh_key(plant, says, tmp_path, monkeypatch, capsys):
    """A key another user could read or write would let forged records pass; a FIFO hung every audit; a 0-byte key
    disabled resume for good. Each is refused with one warning and replaced by a fresh private key, used from then
    on (the second call is silent and returns the same key)."""
    import robustsim.resume as resume

    monkeypatch.setenv("ROBUSTSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(resume, "_WARNED", set())
    (tmp_path / "cache").mkdir(mode=0o700)
    plant(tmp_path / "cache" / "state.key")
    key = _key_of(tmp_path / "cache")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "fresh" in err[0]
    path = tmp_path / "cache" / "state.key"
    assert path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key != b"k" * 32 and len(key) == 32 and key == path.read_bytes()
    assert _key_of(tmp_path / "cache") == key and capsys.readouterr().err == ""


def test_the_key_folder_is_private_whatever_the_umask(tmp_path, monkeypatch, capsys):
    """Created under umask 000 the folder was world-writable (anyone could swap the key); now it is 700, and a
    folder others can write is not trusted with a key at all (a process-local one, one warning)."""
    import robustsim.resume as resume

    monkeypatch.setattr(resume, "_WARNED", set())
    monkeypatch.setenv("ROBUSTSIM_CACHE", str(tmp_path / "made" / "cache"))
    old = os.umask(0)
    try:
        key = _key_of(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "made" / "cache").stat().st_mode) == 0o700 and len(key) == 32
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("ROBUSTSIM_CACHE", str(shared))
    assert _key_of(shared) == resume._PROCESS_KEY
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "writable by other users" in err[0] and not (shared / "state.key").exists()


# data identity from content (issue 47) ----------------------------------------------------------------------------


def _replace_in_place(path: Path, data: bytes) -> None:
    """New bytes of the same length written into the same inode, its mtime put back (what the probe did)."""
    st = path.stat()
    assert len(data) == st.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def test_images_changed_in_place_with_their_mtime_restored_change_the_data_identity(tmp_path):
    from robustsim.data import open_images, open_triplets

    csv = _csv_named(tmp_path / "set", "t.csv")
    first = open_triplets(f"csv:{csv}").identity
    assert open_triplets(f"csv:{csv}").identity == first  # stable while nothing changes
    folder = open_images(str(tmp_path / "set"), 16).identity
    png = tmp_path / "set" / "a1.png"
    other = (tmp_path / "set" / "b1.png").read_bytes()
    same_size = other[: png.stat().st_size].ljust(png.stat().st_size, b"\0")
    _replace_in_place(png, same_size)
    assert open_triplets(f"csv:{csv}").identity != first
    assert open_images(str(tmp_path / "set"), 16).identity != folder


def test_a_bench_recomputes_cells_of_images_changed_in_place(tmp_path, capsys):
    """Cells are keyed by the bytes read: images replaced in place (size and mtime restored) are not the old cells."""
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = tmp_path / "set"
    folder.mkdir()
    rows = ["ref,x0,x1,p"]
    for i in range(6):  # stored uncompressed: every file has the same size, so bytes can be swapped in place
        for k in ("r", "a", "b"):
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / f"{k}{i}.png", compress_level=0)
        rows.append(f"r{i}.png,a{i}.png,b{i}.png,0")
    (folder / "t.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "bench"
    argv = ["bench", "--metrics", "l2", "--data", f"csv:{folder / 't.csv'}", "--device", "cpu", "--out", str(out)]
    assert run_cli(argv) == 0
    before = json.loads((out / "cards" / "l2.json").read_text())
    for i in range(6):  # every x1 becomes its reference: l2 now calls x1 closer, and p = 0 says x0 is
        _replace_in_place(folder / f"b{i}.png", (folder / f"r{i}.png").read_bytes())
    capsys.readouterr()
    assert run_cli(argv) == 0
    after = json.loads((out / "cards" / "l2.json").read_text())
    assert after["clean"] == 0.0 < before["clean"], (before["clean"], after["clean"])


# outputs whole or absent, escapes, the installed package (issue 47) ------------------------------------------------


def test_a_leaderboard_that_cannot_be_finished_leaves_the_previous_one_whole(tmp_path, monkeypatch, capsys):
    """A bench killed as leaderboard.png appeared left png and md without html. The three are staged inside --out and
    moved in together: a failure while drawing the page (a full disk here) leaves the previous set as it was."""
    import robustsim.bench.cards as cards

    out = tmp_path / "bench"
    argv = ["--threads", "1", "bench", "--metrics", "l2", "--data", "mini", "--limit", "4", "--out", str(out)]
    assert run_cli(argv) == 0
    names = ("leaderboard.md", "leaderboard.png", "leaderboard.html")
    before = {n: (out / n).read_bytes() for n in names}
    (out / "cards" / "l2.json").unlink()  # the rerun draws a new card and leaderboard

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cards, "_html", full)
    capsys.readouterr()
    assert run_cli(argv) == 2
    assert "No space left" in one_error_line(capsys.readouterr().err)
    assert {n: (out / n).read_bytes() for n in names} == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging")]


def test_terminal_escapes_in_a_data_file_reach_the_terminal_as_text(tmp_path, capsys):
    """A CSV naming an image `\\x1b[2J\\x1b[Hall tests passed.png` cleared the screen and printed its text; every line
    robustsim prints shows control characters as escapes."""
    folder = tmp_path / "set"
    _csv_named(folder, "t.csv", n=1)
    (folder / "t.csv").write_text("ref,x0,x1,p\n\x1b[2J\x1b[Hall tests passed.png,a0.png,b0.png,1\n")
    code, out, err = run(["score", "--metric", "l2", "--data", f"csv:{folder / 't.csv'}"], capsys)
    assert code == 2 and "\x1b" not in out + err and "\\x1b[2J" in one_error_line(err)


def test_an_output_inside_the_installed_package_is_refused(tmp_path, capsys):
    """`train finetune --out` inside a shipped model's folder wrote there; no command writes into the package."""
    from robustsim.zoo import shipped_checkpoints

    shipped = next(p for p in shipped_checkpoints() if p.name == "lipsim-nano")
    before = sorted(p.name for p in shipped.iterdir())
    for argv in (
        ["train", "finetune", "--init", str(shipped), "--out", str(shipped / "run")],
        ["score", "--metric", "l2", "--limit", "2", "--json", str(shipped / "s.json")],
        ["audit", "--metric", "l2", "--limit", "2", "--out", str(shipped.parent)],
    ):
        code, _, err = run(argv, capsys)
        assert code == 2 and "installed package" in one_error_line(err), argv
    assert sorted(p.name for p in shipped.iterdir()) == before
