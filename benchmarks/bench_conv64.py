"""Float64 convolutions at BLAS speed: robustsim.nn.conv64 (one matrix product per kernel tap over the
channels-first padded images) against PyTorch's own float64 convolution (its generic im2col path: oneDNN has no
float64 kernels) and the float32 convolution (oneDNN), side by side, on the convolutions of lipsim-nano-aoc
(16 channels, 3x3, circular padding, at 64 and 16 px) for a batch of 64 triplets (192 images); and the whole
network's float64 forward against its float32 forward. One torch thread, process CPU time, interleaved.

Run: .venv/bin/python benchmarks/bench_conv64.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, median, ratio_line  # noqa: E402

from robustsim.certify.rounding import twin  # noqa: E402
from robustsim.data import open_triplets  # noqa: E402
from robustsim.nn import conv64  # noqa: E402
from robustsim.zoo import load_metric  # noqa: E402


def layer(side: int, g: torch.Generator, repeats: int) -> None:
    """One convolution of the network at ``side`` px, three ways."""
    x = torch.randn(192, 16, side, side, generator=g, dtype=torch.float64)
    w = torch.randn(16, 16, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(16, generator=g, dtype=torch.float64)
    x32, w32, b32 = x.float(), w.float(), b.float()
    times = interleaved(
        {
            "ours float64": lambda: conv64.conv2d(x, w, b, 1, "circular"),
            "torch float64": lambda: F.conv2d(F.pad(x, (1,) * 4, mode="circular"), w, b),
            "torch float32": lambda: F.conv2d(F.pad(x32, (1,) * 4, mode="circular"), w32, b32),
        },
        repeats,
    )
    ref = F.conv2d(F.pad(x, (1,) * 4, mode="circular"), w, b)
    err = float((conv64.conv2d(x, w, b, 1, "circular") - ref).abs().max())
    ms = ", ".join(f"{k} {1000 * median(v):.1f} ms" for k, v in times.items())
    print(f"{side} px: {ms}; largest difference to torch's float64 {err:.1e}")
    print(f"  ours float64 / torch float64: {ratio_line(times, 'ours float64', 'torch float64')}")
    print(f"  ours float64 / torch float32: {ratio_line(times, 'ours float64', 'torch float32')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print(f"load before {load()}; one thread")
    with torch.no_grad():
        for side in (64, 16):
            layer(side, g, args.repeats)
        metric = load_metric("lipsim-nano-aoc", dtype="float32")
        double = twin(metric)
        data = open_triplets("mini:test", limit=192)
        images = torch.stack([data[i][k] for i in range(64) for k in ("ref", "x0", "x1")])
        times = interleaved(
            {"float64": lambda: double._embed(images.double()), "float32": lambda: metric._embed(images)}, args.repeats
        )
        print(f"lipsim-nano-aoc forward, 192 images: float64 / float32 {ratio_line(times, 'float64', 'float32')}")
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
