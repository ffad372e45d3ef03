"""SLL conv block vs two plain 3x3 convolutions of the same width; eval with cached rescaling vs uncached;
certification vs one plain forward pass over the same triplets. Prints ratios measured in one run.

Targets (issue 4): eval with cache <= 1.1x the plain pair; certification <= 1.05x the forward pass.
Run: .venv/bin/python benchmarks/bench_sll.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved  # noqa: E402
from robustsim.certify import certify_2afc  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from robustsim.data import open_triplets, triplet_loader  # noqa: E402
from robustsim.models import LipSimMetric, LipSimNet  # noqa: E402
from robustsim.nn import SLLConv2d  # noqa: E402


class PlainPair(nn.Module):
    """What an SLL block costs at least: a conv, a ReLU, a transposed conv (two 3x3 convs)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x - self.b(F.relu(self.a(x)))


def bench_block(size: int, channels: int = 45, batch: int = 32) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size)
    sll, plain = SLLConv2d(channels), PlainPair(channels)

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwd_bwd(m):
        m.zero_grad()
        m(x).sum().backward()

    def uncached():
        sll._cache = None
        with torch.no_grad():
            sll(x)

    sll.eval().requires_grad_(False)
    plain.eval()
    t = interleaved({"plain": lambda: fwd(plain), "sll_cached": lambda: fwd(sll), "sll_uncached": uncached})
    sll.train().requires_grad_(True)
    plain.train()
    tb = interleaved({"plain": lambda: fwd_bwd(plain), "sll": lambda: fwd_bwd(sll)}, repeat=3)
    print(
        f"{size:>3} px  eval: plain {t['plain'] * 1e3:7.1f} ms  SLL cached {t['sll_cached'] / t['plain']:.2f}x  "
        f"uncached {t['sll_uncached'] / t['plain']:.2f}x  |  train fwd+bwd: SLL {tb['sll'] / tb['plain']:.2f}x"
    )


def bench_certify(n: int = 300) -> None:
    """Both sides read the same triplets through the same loader; certify adds only the radius maths."""
    torch.manual_seed(0)
    metric = LipSimMetric(LipSimNet("tiny", embed_dim=1792, input_size=64)).eval().requires_grad_(False)
    data = open_triplets("mini")
    sub = Subset(data, range(n))
    sub.name = data.name  # type: ignore[attr-defined]

    def forward_only():
        with torch.no_grad():
            for batch in triplet_loader(sub, batch_size=100, workers=0):
                metric.embed(torch.cat([batch["ref"], batch["x0"], batch["x1"]]))

    def certify():
        certify_2afc(metric, sub, [36 / 255, 72 / 255, 108 / 255], batch_size=100, workers=0, progress=False)

    t = interleaved({"forward": forward_only, "certify": certify}, repeat=5)
    print(
        f"certify {n} triplets (tiny, 64 px): one forward pass {t['forward']:.2f} s, certify {t['certify']:.2f} s "
        f"-> {t['certify'] / t['forward']:.3f}x"
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    print("SLL conv block vs plain conv pair (batch 32, 45 channels); ratios = time / plain")
    for size in (32, 64):
        bench_block(size)
    bench_certify()
