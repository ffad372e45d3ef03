"""Threads (robustsim.threads): chosen from the CPUs really usable (affinity, cgroup quota, other runnable work,
torchrun), and the same audit at one and two threads (the same law, not the same bits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import robustsim
from robustsim.data import open_triplets
from robustsim.threads import busy_elsewhere, cgroup_cpu_limit


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


def test_thread_count_follows_the_affinity_mask_torchrun_and_overrides():
    cpus = sorted(os.sched_getaffinity(0))
    assert _threads_in_child({cpus[0]}) == 1  # one usable CPU: one thread, whatever the host has
    assert _threads_in_child(set(cpus), {"LOCAL_WORLD_SIZE": str(len(cpus) + 1)}) == 1
    assert _threads_in_child({cpus[0]}, {"ROBUSTSIM_THREADS": "3"}) == 3
    assert _threads_in_child({cpus[0]}, args="2") == 2


BORDERLINE = 2  # of 32: triplets whose attack outcome a 1e-7 rounding difference may change (docs/cli.md)


@pytest.mark.portable
@pytest.mark.slow
def test_the_audit_agrees_at_one_and_two_threads_up_to_ties_and_borderline_triplets(tmp_path):
    """1 and 2 threads run different kernels (another split of each reduction): the clean decisions agree wherever
    the two distances are further apart than both computations' rounding, the certified triplets agree (a
    certificate covers any summation order), and the attacks' outcomes differ on at most BORDERLINE triplets (an
    attack amplifies a last-bit difference only where a triplet's final margin is near 0)."""
    from robustsim.certify import certified_radius

    reports = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        argv = ["--threads", str(threads), "audit", "--metric", "lipsim-nano", "--data", "mini", "--limit", "32"]
        argv += ["--steps", "8", "--eps", "0.25,0.5", "--batch-size", "16", "--out", str(out)]
        subprocess.run([sys.executable, "-m", "robustsim", *argv], check=True, capture_output=True, cwd=tmp_path)
        reports.append(json.loads((out / "report.json").read_text()))
    assert [r["runtime"]["threads"] for r in reports] == [1, 2]
    one, two = (r["per_triplet"] for r in reports)
    metric, data = robustsim.load_metric("lipsim-nano"), open_triplets("mini", limit=32)
    ref, x0, x1 = (torch.stack([data[i][k] for i in range(32)]) for k in ("ref", "x0", "x1"))
    with torch.no_grad():
        gap = (metric(ref, x0).double() - metric(ref, x1).double()).abs()
    # away from ties: the distances lie in [0, 2] and each thread count computes them within ~1e-6 (float32
    # embeddings of 2560 entries); a gap of 1e-4 leaves a wide margin
    clear = (gap > 1e-4).tolist()
    assert [c for c, ok in zip(one["clean"], clear, strict=True) if ok] == [
        c for c, ok in zip(two["clean"], clear, strict=True) if ok
    ]
    radius = certified_radius(metric, ref, x0, x1)  # certificates cover any summation order: they agree unless
    for i, e in enumerate((0.25, 0.5)):  # a radius sits within the float noise of the asked eps
        decided = ((radius - e).abs() > 1e-5 * e).tolist()
        assert [c for c, ok in zip(one["certified"][i], decided, strict=True) if ok] == [
            c for c, ok in zip(two["certified"][i], decided, strict=True) if ok
        ]
    for r1, r2 in zip(one["robust"], two["robust"], strict=True):
        assert sum(a != b for a, b in zip(r1, r2, strict=True)) <= BORDERLINE
    for r in reports:
        assert r["robust"][0] < r["clean"] and all(c <= b for c, b in zip(r["certified"], r["robust"], strict=True))


def _threads_in_child(cpus: set[int], env: dict[str, str] | None = None, args: str = "") -> int:
    code = (
        f"import os, sys; os.sched_setaffinity(0, {cpus!r});"
        f"from robustsim.threads import configure_threads; print(configure_threads({args or None}))"
    )
    child_env = {k: v for k, v in os.environ.items() if k not in ("ROBUSTSIM_THREADS", "LOCAL_WORLD_SIZE")}
    child_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env, check=True)
    return int(out.stdout.strip())


def test_a_chosen_thread_count_follows_the_machine_between_cells_and_a_pinned_one_stays(monkeypatch):
    """follow_machine (called between bench cells, demo sections and training epochs) re-reads the load only
    where robustsim chose the count; the counts a run used are recorded in its reports."""
    import robustsim.threads as th

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(th, "default_threads", lambda: 1)
        monkeypatch.delenv("ROBUSTSIM_THREADS", raising=False)
        assert th.configure_threads(None) == 1
        monkeypatch.setattr(th, "default_threads", lambda: 2)  # the other job ended
        assert th.follow_machine() == 2 == torch.get_num_threads()
        assert {1, 2} <= set(th.runtime_info()["threads_used"])
        th.configure_threads(1)  # pinned (--threads 1): the load no longer matters
        assert th.follow_machine() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
