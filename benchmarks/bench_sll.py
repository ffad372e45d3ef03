"""SLL layers: ours vs the SLL reference implementation (Araujo et al.'s code), a training step and an
attack step; eval with the cached folded kernel vs two plain convolutions; certification vs one
forward pass. Ratios from interleaved runs, one torch thread, process CPU time.

Targets: conv train step <= 0.9x the reference's; eval cached <= 1.1x the plain pair and
certification <= 1.05x one forward pass.
Run: .venv/bin/python benchmarks/bench_sll.py --sll-repo PATH  (PATH: a checkout of
araujoalexandre/Lipschitz-SLL-Networks; without it the reference comparison is skipped)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, ratio_line  # noqa: E402

from robustsim.certify import certify_2afc  # noqa: E402
from robustsim.data import open_triplets, triplet_loader  # noqa: E402
from robustsim.models import LipSimMetric, LipSimNet  # noqa: E402
from robustsim.nn import SLLConv2d, SLLLinear  # noqa: E402


class PlainPair(nn.Module):
    """What an SLL block costs at least: a conv, a ReLU, a transposed conv (two 3x3 convs)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x - self.b(F.relu(self.a(x)))


def reference_layers(repo: Path):
    sys.path.insert(0, str(repo))
    from core.models.layers import SDPBasedLipschitzConvLayer, SDPBasedLipschitzLinearLayer

    return SDPBasedLipschitzConvLayer, SDPBasedLipschitzLinearLayer


def train_step(layer: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    layer(x).square().mean().backward()
    opt.step()


def attack_step(layer: nn.Module, x: torch.Tensor) -> None:
    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(layer(xa).square().sum(), xa)


def bench_reference(repo: Path, repeats: int) -> None:
    RefConv, RefLinear = reference_layers(repo)
    torch.manual_seed(0)
    for name, ours, ref, x in (
        ("conv 45 ch, 32 px, batch 32", SLLConv2d(45), RefConv(45, 45), torch.randn(32, 45, 32, 32)),
        ("linear 1024, batch 256", SLLLinear(1024), RefLinear(1024, 1024), torch.randn(256, 1024)),
    ):
        with torch.no_grad():  # the same weights on both sides
            ref_w = ref.kernel if hasattr(ref, "kernel") else ref.weight
            ours.weight.copy_(ref_w)
            ours.bias.copy_(ref.bias.reshape(-1))
            if hasattr(ref, "weight"):
                ours.log_q.copy_(ref.q)  # the reference conv layer's q cancels out (q_i / q_i): ours keeps 0
        with torch.no_grad():
            diff = float((ours(x) - ref(x)).abs().max())
        opt_o, opt_r = torch.optim.Adam(ours.parameters(), 1e-4), torch.optim.Adam(ref.parameters(), 1e-4)
        t = interleaved(
            {
                "ours": lambda o=ours, x=x, opt=opt_o: train_step(o, x, opt),
                "ref": lambda r=ref, x=x, opt=opt_r: train_step(r, x, opt),
            },
            repeats,
        )
        ours.eval().requires_grad_(False)
        ref.eval().requires_grad_(False)
        ta = interleaved(
            {"ours": lambda o=ours, x=x: attack_step(o, x), "ref": lambda r=ref, x=x: attack_step(r, x)}, repeats
        )
        print(
            f"{name}: train step ours/reference {ratio_line(t, 'ours', 'ref')}; attack step (eval, input grads) "
            f"{ratio_line(ta, 'ours', 'ref')}; outputs differ by {diff:.1e}"
        )


def bench_plain(repeats: int, size: int = 64, channels: int = 45, batch: int = 32) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size)
    sll, plain = SLLConv2d(channels).eval().requires_grad_(False), PlainPair(channels).eval()

    def fwd(m):
        with torch.no_grad():
            m(x)

    def uncached():
        sll._cache = None
        fwd(sll)

    t = interleaved({"plain": lambda: fwd(plain), "cached": lambda: fwd(sll), "uncached": uncached}, repeats)
    print(
        f"eval {size} px: SLL cached / plain pair {ratio_line(t, 'cached', 'plain')}; "
        f"uncached / plain {ratio_line(t, 'uncached', 'plain')}"
    )


def bench_certify(repeats: int, n: int = 300) -> None:
    """Both sides read the same triplets through the same loader; certify adds only the radius maths."""
    torch.manual_seed(0)
    metric = LipSimMetric(LipSimNet("tiny", embed_dim=1792, input_size=64)).eval().requires_grad_(False)
    sub = open_triplets("mini", size=64, limit=n)

    def forward_only():
        with torch.no_grad():
            for batch in triplet_loader(sub, batch_size=100, workers=0):
                metric.embed(torch.cat([batch["ref"], batch["x0"], batch["x1"]]))

    def certify():
        certify_2afc(metric, sub, [36 / 255, 72 / 255, 108 / 255], batch_size=100, workers=0, progress=False)

    t = interleaved({"forward": forward_only, "certify": certify}, repeats)
    print(f"certify {n} triplets (tiny, 64 px) / one forward pass: {ratio_line(t, 'certify', 'forward')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sll-repo", type=Path, default=None, help="checkout of araujoalexandre/Lipschitz-SLL-Networks")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load before {load()}; one torch thread; process CPU time; {args.repeats} interleaved repeats")
    if args.sll_repo is not None:
        bench_reference(args.sll_repo, args.repeats)
    else:
        print("reference comparison skipped: pass --sll-repo PATH to a Lipschitz-SLL-Networks checkout")
    bench_plain(args.repeats)
    bench_certify(max(3, args.repeats // 3))
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
