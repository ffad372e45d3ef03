"""Issue 20: threads chosen from the CPUs really usable, the same audit at any thread count, plots that
infer their kind, small training runs, packaging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from robustsim.overlay import infer_kind, load_report, overlay_figure
from robustsim.threads import busy_elsewhere, cgroup_cpu_limit

ROOT = Path(__file__).resolve().parents[1]


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path):
    root = tmp_path / "cg"
    (root / "job" / "step").mkdir(parents=True)
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    (root / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, proc) is None
    (root / "job" / "cpu.max").write_text("150000 100000\n")  # a parent's quota caps its children
    (root / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, proc) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1, tmp_path / "none") == 3.0


def test_busy_elsewhere_counts_other_runnable_tasks(tmp_path):
    load = tmp_path / "loadavg"
    load.write_text("1.00 0.50 0.20 3/400 1234\n")
    assert busy_elsewhere(1, load) == 2 and busy_elsewhere(2, load) == 1 and busy_elsewhere(4, load) == 0


def _threads_in_child(cpus: set[int], env: dict[str, str] | None = None, args: str = "") -> int:
    code = (
        f"import os, sys; os.sched_setaffinity(0, {cpus!r});"
        f"from robustsim.threads import configure_threads; print(configure_threads({args or None}))"
    )
    child_env = {k: v for k, v in os.environ.items() if k not in ("ROBUSTSIM_THREADS", "LOCAL_WORLD_SIZE")}
    child_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env, check=True)
    return int(out.stdout.strip())


def test_thread_count_follows_the_affinity_mask_torchrun_and_overrides():
    cpus = sorted(os.sched_getaffinity(0))
    assert _threads_in_child({cpus[0]}) == 1  # one usable CPU: one thread, whatever the host has
    assert _threads_in_child(set(cpus), {"LOCAL_WORLD_SIZE": str(len(cpus) + 1)}) == 1
    assert _threads_in_child({cpus[0]}, {"ROBUSTSIM_THREADS": "3"}) == 3
    assert _threads_in_child({cpus[0]}, args="2") == 2


def test_the_audit_gives_the_same_per_triplet_result_at_one_and_two_threads(tmp_path):
    reports = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        argv = ["--threads", str(threads), "audit", "--metric", "lipsim-nano", "--data", "mini", "--limit", "32"]
        argv += ["--steps", "8", "--eps", "0.25,0.5", "--batch-size", "16", "--out", str(out)]
        subprocess.run([sys.executable, "-m", "robustsim", *argv], check=True, capture_output=True, cwd=tmp_path)
        reports.append(json.loads((out / "report.json").read_text()))
    assert [r["runtime"]["threads"] for r in reports] == [1, 2]
    assert reports[0]["per_triplet"] == reports[1]["per_triplet"]
    assert reports[0]["robust"] == reports[1]["robust"] and reports[0]["robust"][0] < reports[0]["clean"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reports")
    out = {"audit": base / "audit", "certify": base / "certify.json", "retrieval": base / "retrieval"}
    assert (
        run_cli(["audit", "--metric", "lipsim-nano", "--limit", "8", "--steps", "2", "--out", str(out["audit"])]) == 0
    )
    assert run_cli(["certify", "--metric", "lipsim-nano", "--limit", "8", "--json", str(out["certify"])]) == 0
    assert (
        run_cli(
            [
                "retrieval",
                "--metric",
                "l2",
                "--limit",
                "4",
                "--steps",
                "2",
                "--k",
                "1,5",
                "--out",
                str(out["retrieval"]),
            ]
        )
        == 0
    )
    return out


def test_plot_infers_its_kind_from_the_reports(reports, tmp_path):
    audit, certify, retrieval = (load_report(reports[k]) for k in ("audit", "certify", "retrieval"))
    assert infer_kind([audit]) == "robust" and infer_kind([certify]) == "certified"
    assert infer_kind([retrieval]) == "robust" and infer_kind([audit, certify]) == "robust"
    fig = overlay_figure([retrieval])
    (line,) = fig.axes[0].get_lines()
    assert line.get_xdata()[0] == 0.0 and "recall@1" in fig.axes[0].get_ylabel()
    for sources, name in (
        ([reports["audit"]], "a.png"),
        ([reports["certify"]], "c.png"),
        ([reports["retrieval"]], "r.png"),
    ):
        assert run_cli(["plot", *map(str, sources), "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).stat().st_size > 1000


def test_every_report_uses_the_same_schema_key(reports):
    for path in (reports["audit"] / "report.json", reports["certify"], reports["retrieval"] / "report.json"):
        report = json.loads(path.read_text())
        assert report["version"] >= 1 and "schema" not in report and report["runtime"]["threads"] >= 1


def test_train_limit_and_max_steps_make_a_one_minute_run(tmp_path):
    out = tmp_path / "run"
    argv = [
        "train",
        "distill",
        "--teacher",
        "effnet-lite0",
        "--student",
        "nano",
        "--input-size",
        "32",
        "--limit",
        "48",
        "--max-steps",
        "3",
        "--batch-size",
        "16",
        "--eval-data",
        "",
        "--out",
        str(out),
    ]
    assert run_cli(argv) == 0
    steps = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == [1, 2, 3]
    assert json.loads((out / "last" / "config.json").read_text())["training"]["global_step"] == 3


def test_packaging_license_data_namespace_and_help(capsys):
    import robustsim

    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and hasattr(robustsim, "data")
    for cmd in (["score"], ["audit"], ["certify"], ["retrieval"], ["train", "distill"], ["train", "finetune"]):
        assert run_cli([*cmd, "--help"]) == 0
        limit = capsys.readouterr().out.split("--limit")[1].split("--")[0]
        assert any(w in limit for w in ("triplets", "queries", "images")), (cmd, limit)
