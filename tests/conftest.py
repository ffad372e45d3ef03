from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROBUSTSIM_CACHE", str(ROOT / ".pytest_cache" / "robustsim-cache"))
os.environ.setdefault("ROBUSTSIM_WEIGHTS", str(ROOT / ".pytest_cache" / "robustsim-weights"))
os.environ["ROBUSTSIM_OFFLINE"] = "1"  # no test touches the internet; the local-server tests unset it
torch.set_num_threads(1)
if os.environ.get("ROBUSTSIM_TEST_LAYOUT") == "channels_last":  # make test-portable: the second kernel configuration
    from robustsim.metrics.base import Metric

    _as_input = Metric.as_input

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """Every metric sees its images channels-last: other convolution and reduction kernels, the same maths."""
        x = _as_input(self, x)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    Metric.as_input = _channels_last  # type: ignore[method-assign]
L2_EPS = [0.25, 0.5, 1.0]
LINF_EPS = [1 / 255, 2 / 255, 4 / 255]


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
    return make_nights(tmp_path / "nights")


def make_nights(root: Path) -> Path:
    """A NIGHTS layout: data.csv + ref/ + distort/, mixed splits, one low-vote row, counts and fractions."""
    rng = np.random.default_rng(0)
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


def make_csv_triplets(root: Path, n: int = 8) -> Path:
    """The quickstart's layout: ``triplets.csv`` (ref,x0,x1,p) beside ``ref/`` and ``distort/``, 64 px PNGs."""
    rng = np.random.default_rng(2)
    rows = ["ref,x0,x1,p"]
    for i in range(n):
        for sub in (f"ref/{i:03d}.png", f"distort/{i:03d}_0.png", f"distort/{i:03d}_1.png"):
            save_png(root / sub, random_image(rng, 64))
        rows.append(f"ref/{i:03d}.png,distort/{i:03d}_0.png,distort/{i:03d}_1.png,{(i % 5) / 4}")
    (root / "triplets.csv").write_text("\n".join(rows) + "\n")
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


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def csv_set(tmp_path: Path) -> Path:
    """A 4-triplet CSV set of 16 px images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    rows = ["ref,x0,x1,p"]
    for i in range(4):
        for k in ("r", "a", "b"):
            save_png(root / f"{k}{i}.png", random_image(rng, 16))
        rows.append(f"r{i}.png,a{i}.png,b{i}.png,{i % 2}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def subset(data, n):
    return data.subset(n)


@pytest.fixture(scope="module")
def mini200():
    from robustsim.data import open_triplets

    return subset(open_triplets("mini"), 200)


def exact_min_distance(ref, x0, x1, y, norm):
    """Smallest ||delta|| (l2 or linf) with ref + delta in [0, 1] flipping the MSE metric's decision.

    MSE: d(x, x1) - d(x, x0) = (2 <x, x0 - x1> + |x1|^2 - |x0|^2) / n, linear in x. The flipped side is
    the halfspace {a.x <= c}; its nearest point in the box along the ball's geometry is found by a
    1-D bisection: l2 -> x(lam) = clamp(ref - lam a, 0, 1); linf -> x(t) = clamp(ref - t sign(a), 0, 1).
    """
    out = []
    for r, a0, a1, lab in zip(ref.double(), x0.double(), x1.double(), y, strict=True):
        r, a0, a1 = r.flatten(), a0.flatten(), a1.flatten()
        # margin(x) = d0 - d1 for label 1, d1 - d0 for label 0; flip when margin(x) <= 0
        w = 2 * (a1 - a0)  # d0 - d1 = (<x, w> + |a0|^2 - |a1|^2) / n
        b = a0 @ a0 - a1 @ a1
        if lab == 0:
            w, b = -w, -b
        direction = w if norm == "l2" else w.sign()

        def value(x, w=w, b=b):  # > 0 correct, <= 0 flipped
            return float(x @ w + b)

        def point(s, r=r, direction=direction):
            return (r - s * direction).clamp(0, 1)

        hi = 1.0
        while value(point(hi)) > 0 and hi < 1e6:
            hi *= 2
        if value(point(hi)) > 0:
            out.append(math.inf)  # the box prevents any flip
            continue
        lo = 0.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if value(point(mid)) > 0 else (lo, mid)
        delta = point(hi) - r
        out.append(float(delta.norm() if norm == "l2" else delta.abs().max()))
    return torch.tensor(out)


def small_embedding_metric():
    """A small random CNN as an embedding metric (32 px input)."""
    import robustsim

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    )
    return robustsim.EmbeddingMetric(net, input_size=32, mean=0.5, std=0.25, name="cnn").requires_grad_(False)


class Linear(nn.Module):
    """f(z) = W z (flattened), no structural bound: its constant is declared on the metric."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ self.w.T


def linear_metric(seed: int, input_size: int, dim: int, scale: float, std: float, isometric: bool):
    """W = scale x (an orthogonal matrix when ``isometric``, else a random one scaled to spectral norm
    ``scale``); declared Lipschitz constant ``scale`` (tight)."""
    g = torch.Generator().manual_seed(seed)
    n_in = 3 * input_size * input_size
    w = torch.randn(dim, n_in, generator=g, dtype=torch.float64)
    if isometric:
        q, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=g, dtype=torch.float64))
        w = q[:dim]
    w = scale * w / torch.linalg.matrix_norm(w, ord=2)
    from robustsim.metrics import EmbeddingMetric

    std_t = torch.full((3,), std, dtype=torch.float64)
    return EmbeddingMetric(Linear(w), input_size=input_size, mean=0.5, std=std_t, lipschitz=scale).double().eval()


def triplets(seed: int, n: int, size: int, spread: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    ref = 0.5 + 0.1 * (torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) - 0.5)
    noise = lambda: ref + spread * (torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) - 0.5)  # noqa: E731
    return ref, noise().clamp(0, 1), noise().clamp(0, 1)


def per_image_pgd(metric, ref, x0, x1, target: str, radius: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """A strong l2 attack on the metric's own clean decision with *each* moving image in its own ball of
    ``radius`` (the threat the certificate covers); returns (B,) bool flipped."""
    from robustsim.attacks.twoafc import TwoAFCClassifier, margin

    clf = TwoAFCClassifier(metric, ref, x0, x1, "all")
    clean = torch.cat([ref, x0, x1], dim=1)
    with torch.no_grad():
        logits = clf(clean)
    y = (logits[:, 1] > logits[:, 0]).long()
    moving = {"ref": [0], "x0": [1], "x1": [2], "all": [0, 1, 2]}[target]
    r = radius.view(-1, 1, 1, 1)
    delta = torch.zeros_like(clean)
    flipped = torch.zeros(ref.shape[0], dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = -margin(clf(clean + delta), y)
        flipped |= (loss.detach() >= 0).cpu()
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            new = delta.clone()
            for i in moving:
                part = slice(3 * i, 3 * i + 3)
                g_i = grad[:, part]
                step = g_i / g_i.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
                d = delta[:, part] + 2.5 * r / steps * step
                d = d * (r / d.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)).clamp(max=1.0)
                new[:, part] = d
            delta = new
    with torch.no_grad():
        flipped |= (margin(clf(clean + delta), y) <= 0).cpu()
    return flipped


def chrome():
    """Headless Debian chromium through selenium (skips where it is not installed)."""
    selenium = pytest.importorskip("selenium")
    del selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")
    if not (os.path.exists(binary) and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them where apt works)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,800",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


@contextlib.contextmanager
def lock_holder(folder: Path):
    """A second process holding ``folder``'s run lock (robustsim.io.acquire_lock) until the block ends; yields its
    pid."""
    code = (
        "import sys, time; from pathlib import Path; from robustsim.io import acquire_lock; "
        "acquire_lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
