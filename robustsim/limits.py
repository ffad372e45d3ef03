"""Bounds on settings that both the command line and the Python API check (kept free of heavy imports, so
``--help`` and option parsing stay fast)."""

MAX_SIGMA = 10.0  # smoothing noise std, in [0, 1] pixel units: beyond this the noisy images are noise alone
MAX_BATCH = 1 << 16  # items per batch
