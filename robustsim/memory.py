"""glibc's allocator told to keep freed memory, so tensors are not handed back to the kernel and faulted in again.

With glibc's defaults every large tensor (above a threshold that starts at 128 KiB) is an ``mmap`` of its own,
unmapped when freed, and the heap top is trimmed as soon as 128 KiB are free: a forward pass over a batch
re-faults every page of every activation. On a 2-core machine that was a third of robustsim's CPU time in the
kernel (``robustsim score`` on effnet-lite0: sys 6-8 s beside user 9-10 s; ``benchmarks/bench_memory.py``).
:func:`tune_malloc` sets, through ``mallopt``, what ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456`` would set at process start: allocations below
32 MiB come from the heap, freed memory stays mapped until 2 GiB are free, and the heap grows 256 MiB at a
time. The command line calls it first (every ``robustsim`` command, ``python -m robustsim``, torchrun workers);
``import robustsim`` changes nothing in a library user's process (call ``robustsim.memory.tune_malloc()`` to opt in).
It changes where memory comes from, never a number robustsim computes. ``ROBUSTSIM_MALLOC=default`` keeps
the C library's own settings; elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: (1 << 31) - 1, M_TOP_PAD: 256 << 20}


@functools.cache
def tune_malloc() -> str:
    """Apply :data:`SETTINGS` once per process; returns what was done: ``tuned``, ``default`` (opted out),
    or ``unavailable`` (not glibc, or ``mallopt`` refused a setting)."""
    result = "unavailable"
    if os.environ.get("ROBUSTSIM_MALLOC", "").strip().lower() == "default":
        result = "default"
    elif sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
                ok = [libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in SETTINGS.items()]
                result = "tuned" if all(ok) else "unavailable"
        except OSError:
            pass
    return result
