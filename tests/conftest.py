from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROBUSTSIM_CACHE", str(ROOT / ".pytest_cache" / "robustsim-cache"))
os.environ.setdefault("ROBUSTSIM_WEIGHTS", str(ROOT / ".pytest_cache" / "robustsim-weights"))
os.environ["ROBUSTSIM_OFFLINE"] = "1"  # no test touches the internet; the local-server tests unset it
torch.set_num_threads(1)


def run_cli(argv: list[str]) -> int:
    """Exit code of ``robustsim *argv`` run in-process (0 when it returns normally)."""
    from robustsim.cli import main

    try:
        main(argv)
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def random_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def nights_dir(tmp_path: Path) -> Path:
    """A NIGHTS layout: data.csv + ref/ + distort/, mixed splits, one low-vote row, counts and fractions."""
    rng = np.random.default_rng(0)
    root = tmp_path / "nights"
    rows = ["id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet"]
    spec = [
        ("test", "True", 0.0, 6),
        ("test", "False", 1.0, 7),
        ("test", "True", 1.0, 6),
        ("test", "False", 0.0, 5),
        ("train", "True", 6, 6),
        ("val", "False", 0.0, 6),
    ]
    for i, (split, is_in, right, votes) in enumerate(spec):
        for sub in (f"ref/{i:03d}.png", f"distort/{i:03d}_0.png", f"distort/{i:03d}_1.png"):
            save_png(root / sub, random_image(rng))
        left = votes - right if right > 1 else 1 - right
        rows.append(
            f"{i},{left},{right},{votes},ref/{i:03d}.png,distort/{i:03d}_0.png,distort/{i:03d}_1.png,{split},{is_in}"
        )
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def bapps_dir(tmp_path: Path) -> Path:
    """A BAPPS 2afc layout with two categories in val (3 + 2 triplets), soft judgements."""
    rng = np.random.default_rng(1)
    root = tmp_path / "bapps"
    for cat, n in (("traditional", 3), ("cnn", 2)):
        d = root / "2afc" / "val" / cat
        for i in range(n):
            for sub in ("ref", "p0", "p1"):
                save_png(d / sub / f"{i:06d}.png", random_image(rng, 64))
            (d / "judge").mkdir(parents=True, exist_ok=True)
            np.save(d / "judge" / f"{i:06d}.npy", np.array([0.25 * (i + 1)], dtype=np.float32))
    return root
