"""Distillation throughput: with vs without the on-disk teacher-embedding cache (one torch thread,
process CPU time, interleaved repeats), and the CLI as 1 vs 2 processes (torchrun, gloo) for the same
global batch (wall-clock steady-state images/s, interleaved repeats, default thread choice).

Run: .venv/bin/python benchmarks/bench_train.py [--teacher effnet-lite0] [--student nano] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustsim.train.augment import augment, step_generator
from robustsim.train.distill import rmse
from robustsim.train.teacher import load_teacher, teacher_targets

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, median, ratio_line  # noqa: E402

from robustsim.data import open_images
from robustsim.models import LipSimNet
from robustsim.models.lipsim import LipSimMetric


def train_steps(args, cached: bool, images, teacher, targets) -> None:
    torch.manual_seed(0)
    student = LipSimMetric(LipSimNet(args.student, embed_dim=targets.shape[1], input_size=args.size), validate=False)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3, betas=(0.5, 0.9))
    b = args.batch
    for step in range(args.steps):
        idx = list(range(step * b, (step + 1) * b))
        x = torch.stack([images[i] for i in idx])
        if cached:
            t = torch.from_numpy(np.array(targets[idx]))
        else:
            with torch.no_grad():
                t = F.normalize(teacher.embed(x), dim=1)
        g = step_generator(0, step)
        views = torch.cat([augment(x, g, slice(None), b), augment(x, g, slice(None), b)])
        loss = rmse(student._embed(views), torch.cat([t, t]))
        opt.zero_grad()
        loss.backward()
        opt.step()


def cli_rate(args, procs: int, folder: Path, cache: Path) -> float:
    out = Path(tempfile.mkdtemp()) / "run"
    cmd = ["-m", "robustsim", "train", "distill", "--teacher", args.teacher, "--student", args.student,
           "--images", str(folder), "--val-images", "", "--input-size", str(args.size), "--epochs", "1",
           "--batch-size", str(args.batch), "--eval-data", "", "--device", "cpu", "--out", str(out)]  # fmt: skip
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *cmd]
    env = {**__import__("os").environ, "ROBUSTSIM_CACHE": str(cache)}
    subprocess.run([sys.executable, *cmd], check=True, capture_output=True, env=env)
    log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["event"] == "step"]
    shutil.rmtree(out.parent, ignore_errors=True)
    return (len(steps) - 1) * args.batch / (steps[-1]["seconds"] - steps[0]["seconds"])  # steady state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="effnet-lite0")
    ap.add_argument("--student", default="nano")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load before {load()}")
    work = Path(tempfile.mkdtemp())
    images = open_images("mini", args.size)
    folder = work / "images"
    folder.mkdir()
    from PIL import Image

    n = args.batch * args.steps
    for i in range(n):
        Image.fromarray(images[i].mul(255).round().byte().permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    sub = open_images(str(folder), args.size)
    teacher = load_teacher(args.teacher, sub)
    t0 = time.perf_counter()
    targets = teacher_targets(teacher, sub, work / "cache" / "teachers", progress=False)
    fill = time.perf_counter() - t0
    t = interleaved(
        {
            "cached": lambda: train_steps(args, True, sub, teacher, targets),
            "uncached": lambda: train_steps(args, False, sub, teacher, targets),
        },
        args.repeats,
    )
    print(
        f"distil {args.student} @ {args.size}px from {args.teacher}, batch {args.batch} (x2 views), {args.steps} steps"
    )
    print(f"  filling the cache once: {fill:.1f} s for {n} images")
    print(
        f"  CPU time with cache / without: {ratio_line(t, 'cached', 'uncached')} "
        f"({n / median(t['cached']):.1f} vs {n / median(t['uncached']):.1f} img per CPU-second)"
    )
    rates: dict[str, list[float]] = {"one": [], "two": []}
    for _ in range(max(1, args.repeats // 3)):
        rates["one"].append(cli_rate(args, 1, folder, work / "cache"))
        rates["two"].append(cli_rate(args, 2, folder, work / "cache"))
    one, two = median(rates["one"]), median(rates["two"])
    pairs = [b / a for a, b in zip(rates["one"], rates["two"], strict=True)]
    print(
        f"  CLI 1 process {one:7.1f} img/s, torchrun 2 processes {two:7.1f} img/s -> {two / one:.2f}x "
        f"(pairs {min(pairs):.2f}..{max(pairs):.2f}, n={len(pairs)})"
    )
    print(f"load after {load()}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
