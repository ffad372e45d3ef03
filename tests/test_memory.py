"""Robustsim's commands keep freed memory mapped (robustsim.memory), a library import leaves the process as it was. A
forward pass over batches of changing size, run in a fresh process with the tuning and with
``ROBUSTSIM_MALLOC=default``, must fault far fewer pages in with it, and give the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

WORKLOAD = """
import json, resource, sys
import robustsim, torch
from robustsim.memory import tune_malloc
assert tune_malloc.cache_info().currsize == 0, "import robustsim tuned the allocator"
state = tune_malloc()  # what the command line does first
torch.set_num_threads(1)
torch.manual_seed(0)
conv = torch.nn.Conv2d(16, 32, 3, padding=1)
g = torch.Generator().manual_seed(0)
r0 = resource.getrusage(resource.RUSAGE_SELF)
total = 0.0
with torch.no_grad():
    for i in range(40):
        x = torch.rand(8, 16, 64 + (i % 5) * 8, 64, generator=g)
        total += float(conv(x).relu().sum())
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"state": state, "faults": r1.ru_minflt - r0.ru_minflt, "total": total}))
"""


def _run(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's own variables: none
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", WORKLOAD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_commands_tuning_keeps_freed_memory_and_changes_no_number():
    tuned = _run({"ROBUSTSIM_MALLOC": ""})
    plain = _run({"ROBUSTSIM_MALLOC": "default"})
    assert tuned["state"] == "tuned" and plain["state"] == "default"
    assert tuned["total"] == plain["total"]
    assert tuned["faults"] < 0.3 * plain["faults"], (tuned, plain)


def test_a_command_tunes_its_process_and_a_library_import_does_not():
    code = "\n".join([
        "import sys, robustsim",
        "from robustsim.memory import tune_malloc",
        "assert tune_malloc.cache_info().currsize == 0, 'import robustsim tuned the allocator'",
        "from robustsim.cli import main",
        "try:",
        "    main(['metrics', '--width', '60'])",
        "except SystemExit:",
        "    pass",
        "print(tune_malloc.cache_info().currsize, file=sys.stderr)",
    ])  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip().splitlines()[-1] == "1", done.stderr[-500:]
