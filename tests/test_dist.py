"""A rank stopped with kill -STOP no longer leaves the others asleep in a collective for torch's
30 minutes: collectives wait ROBUSTSIM_DIST_TIMEOUT seconds, and the rank that waited ends with one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from robustsim.dist import collective_timeout
from robustsim.errors import InputError

SCRIPT = """
import os, signal
import torch.distributed as dist
from robustsim.metrics.base import EmbeddingMetric
stop = lambda: os.kill(os.getpid(), signal.SIGSTOP)
if os.environ["RANK"] == "1" and os.environ["STOP_AT"] == "join":  # stopped before joining the group
    join = dist.init_process_group
    dist.init_process_group = lambda *a, **k: (stop(), join(*a, **k))[1]
if os.environ["RANK"] == "1" and os.environ["STOP_AT"] == "batch":  # stopped at its third batch
    embed, calls = EmbeddingMetric._embed, []
    def stopping(self, x):
        calls.append(1)
        if len(calls) == 3:
            stop()
        return embed(self, x)
    EmbeddingMetric._embed = stopping
from robustsim.cli import main
main(["score", "--metric", "lipsim-nano", "--data", "mini", "--limit", "64", "--batch-size", "4"])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("stop_at", ["join", "batch"])
def test_a_stopped_rank_ends_the_run_in_one_line_after_the_timeout(tmp_path, stop_at):
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ROBUSTSIM_DIST_TIMEOUT="4", STOP_AT=str(stop_at))
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stderr=subprocess.PIPE, text=True))
    t0 = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert time.monotonic() - t0 < 60 and procs[0].returncode not in (0, None)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "stopped answering" in lines[0] and "ROBUSTSIM_DIST_TIMEOUT" in lines[0], err[-800:]
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_a_bad_collective_timeout_is_one_line(monkeypatch, value):
    monkeypatch.setenv("ROBUSTSIM_DIST_TIMEOUT", value)
    with pytest.raises(InputError, match="ROBUSTSIM_DIST_TIMEOUT"):
        collective_timeout()
    monkeypatch.setenv("ROBUSTSIM_DIST_TIMEOUT", "7")
    assert collective_timeout().total_seconds() == 7
