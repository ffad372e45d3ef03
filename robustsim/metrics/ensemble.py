"""DreamSim-style ensembles: concatenated, mean-centred, unit-normalised member embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.errors import InputError
from robustsim.metrics.base import EmbeddingMetric, Metric


class EnsembleMetric(EmbeddingMetric):
    """Embedding = concat_i normalize(e_i(x) - c_i), so 1 - cos is the mean member cosine distance.

    Centres ``c_i`` default to 0; :meth:`fit_centers` sets them to the members' mean embedding over
    a reference batch (the DreamSim recipe). Members must be embedding metrics.
    """

    def __init__(self, members: Sequence[Metric], name: str | None = None, validate: bool = True) -> None:
        from robustsim.metrics.base import metric_arg

        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not members:
            raise InputError(f"an ensemble needs a non-empty list of embedding metrics, got {members!r}")
        for i, m in enumerate(members):
            metric_arg(m, f"ensemble member {i}")
            if not isinstance(m, EmbeddingMetric):
                raise InputError(
                    f"ensemble member {m.name!r} has no embed(): only embedding metrics combine into an a+b ensemble; "
                    'for a weighted sum of distances use robustsim.PerceptualLoss("0.5*l2+0.5*ssim")'
                )
        super().__init__(nn.Identity(), name=name or "+".join(m.name for m in members), validate=validate)
        self.members = nn.ModuleList(members)
        for m in self.members:
            m.validate = False
        self.input_size = None
        self.centers = nn.ParameterList([nn.Parameter(torch.zeros(0), requires_grad=False) for _ in members])

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for m, c in zip(self.members, self.centers, strict=True):
            e = m._embed(x)
            if c.numel():
                e = e - c
            parts.append(F.normalize(e, dim=1, eps=1e-12))
        return torch.cat(parts, dim=1) * len(parts) ** -0.5

    @torch.no_grad()
    def fit_centers(self, images: torch.Tensor) -> None:
        """Set each member's centre to its mean embedding over ``images`` ((B, 3, H, W) in [0, 1])."""
        for m, c in zip(self.members, self.centers, strict=True):
            c.data = m.embed(images).mean(0)


def zoo_ensemble(members: Sequence[Metric], name: str | None = None, validate: bool = True, **_: object) -> Metric:
    """The builder of a zoo ensemble row: its members, already built (with the options given to the row)."""
    return EnsembleMetric(members, name=name, validate=validate)
