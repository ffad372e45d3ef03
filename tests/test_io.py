"""Outputs (robustsim.io): checked before work, written atomically, never replacing a device, FIFO, folder or
symlink; report folders claimed with a lock."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import lock_holder, one_error_line, run, run_cli

from robustsim.errors import WeightsError
from robustsim.io import LOCK_NAME, OutputDir


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
    import robustsim.score2afc as evaluate

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
    with lock_holder(out) as pid:
        code, _, err = run([*argv, "--overwrite"], capsys)
        assert code == 2 and f"in use by process {pid}" in one_error_line(err)
    assert (out / LOCK_NAME).exists()  # killed: its file stays, its lock went with it
    assert run_cli([*argv, "--overwrite"]) == 0
    assert not (out / LOCK_NAME).exists()


def test_output_dir_claims_nest_within_one_process(tmp_path):
    with OutputDir(tmp_path / "run", ("report.json",)) as out, OutputDir(out, ("report.json",)):
        (out / "report.json").write_text("{}")  # the inner claim does not refuse its own run
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_a_lock_file_is_held_only_by_a_live_holder_and_planted_ones_are_refused_in_one_line(tmp_path):
    """The kernel's lock decides: whatever a lock file holds (garbage, a huge pid, the pid of a live unrelated
    process), nobody holding it means the folder is free; a folder, a symbolic link or a FIFO planted as the lock is
    refused in one line, without reading or blocking."""
    from robustsim.errors import OutputError

    out = tmp_path / "run"
    out.mkdir()
    for text in ('{"pid": "x"}', '{"pid": 99999999999999999999}', str(os.getpid() + 1), "\x00" * 10_000):
        (out / LOCK_NAME).write_text(text)
        with OutputDir(out, ("report.json",)):
            assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert not (out / LOCK_NAME).exists()
    planted = {"folder": lambda p: p.mkdir(), "symlink": lambda p: p.symlink_to("/dev/zero"), "fifo": os.mkfifo}
    for kind, plant in planted.items():
        plant(out / LOCK_NAME)
        with pytest.raises(OutputError) as err, OutputDir(out, ("report.json",)):
            pass
        assert "not a lock file" in str(err.value) and "\n" not in str(err.value), kind
        (out / LOCK_NAME).rmdir() if kind == "folder" else (out / LOCK_NAME).unlink()


def test_two_processes_never_hold_one_folder_at_once(tmp_path):
    """Two processes claim one folder 40 times each as fast as they can: every claim that succeeds sees its own
    mark in the folder until it releases (the lock used to be written in two steps: both held it in 14-34 of 40
    rounds)."""
    out = tmp_path / "run"
    out.mkdir()
    code = """
import os, sys, time
from pathlib import Path
from robustsim.errors import OutputError
from robustsim.io import OutputDir
out, held, clashes = Path(sys.argv[1]), 0, 0
for _ in range(40):
    while True:
        try:
            with OutputDir(out):
                (out / "owner").write_text(str(os.getpid()))
                time.sleep(0.002)
                clashes += (out / "owner").read_text() != str(os.getpid())
                held += 1
            break
        except OutputError:
            time.sleep(0.0005)
print(held, clashes)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [r[0] for r in results] == ["40", "40"] and [r[1] for r in results] == ["0", "0"]
