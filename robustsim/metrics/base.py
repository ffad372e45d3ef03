"""The Metric protocol every robustsim module speaks.

Images are float tensors (B, 3, H, W) in [0, 1]; ``metric(x, y)`` returns (B,) distances.
Embedding metrics also have ``embed(x) -> (B, D)`` and measure ``1 - cos`` between embeddings.
Each metric resizes and normalises internally, so callers always pass [0, 1] images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.errors import InputError
from robustsim.metrics.preprocess import Resize

_RANGE_TOL = 1e-4
_PAIR_VALUES = 2**24  # image values per repeated batch in Metric.pairwise


def validate_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise InputError unless ``x`` is a finite float (B, 3, H, W) batch with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor")
    if x.dim() != 4:
        hint = "add a batch dimension with x[None]" if x.dim() == 3 else "pass a (B, 3, H, W) batch"
        raise InputError(f"{name} must have shape (B, 3, H, W), got {tuple(x.shape)}; {hint}")
    if x.shape[1] != 3:
        hint = (
            "repeat grayscale with x.expand(-1, 3, -1, -1)"
            if x.shape[1] == 1
            else "drop alpha with x[:, :3]"
            if x.shape[1] == 4
            else "images must be channels-first: x.permute(0, 3, 1, 2)"
            if x.shape[-1] == 3
            else "pass RGB images"
        )
        raise InputError(f"{name} must have 3 channels in dim 1, got shape {tuple(x.shape)}; {hint}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor, got {x.dtype}; use x.float() / 255 for uint8 images")
    if x.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one image")
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise InputError(f"{name} contains NaN or inf; check the image loading or the attack step")
        lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        hint = (
            "divide by 255"
            if hi > 1.5 and lo >= 0
            else "map [-1, 1] images with (x + 1) / 2"
            if lo >= -1 - _RANGE_TOL
            else "clamp to [0, 1]"
        )
        raise InputError(f"{name} has values in [{lo:.3g}, {hi:.3g}] but must be in [0, 1]; {hint}")


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block, every submodule's training flag restored after: work that evaluates a
    metric (certificates) leaves it as it found it."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def validate_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    validate_images(x, "x")
    validate_images(y, "y")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"x and y batch sizes differ ({x.shape[0]} vs {y.shape[0]}); pass paired batches")


class Metric(nn.Module):
    """A perceptual distance d(x, y) >= 0 on [0, 1] RGB batches, returning (B,).

    Subclasses implement :meth:`distance` on validated inputs. ``lipschitz`` is an l2 Lipschitz constant
    of the embedding network a user declares (None: none declared); the certifier prefers the bound it
    derives from the network's layers (:func:`robustsim.certify.lipschitz.network_lipschitz`).
    """

    name: str = "metric"
    input_size: int | None = None
    lipschitz: float | None = None

    def __init__(self, validate: bool = True) -> None:
        super().__init__()
        self.validate = validate

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype the metric computes in: its parameters' dtype, else its buffers', else the dtype it
        was last cast to (``metric.double()``, ``.to(torch.float64)``: pixel metrics hold no tensor), else float32."""
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        for t in self.buffers():
            if t.is_floating_point():
                return t.dtype
        return self.__dict__.get("_cast_dtype", torch.float32)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Every cast (``.double()``, ``.to(dtype)``, ``.half()``) also sets the dtype a tensor-free metric computes in:
        a cast maps float32 and float64 alike to its dtype, a move keeps each its own."""
        out = super()._apply(fn, recurse)
        single, double = fn(torch.zeros(1)), fn(torch.zeros(1, dtype=torch.float64))
        if single.dtype == double.dtype and single.is_floating_point():
            self.__dict__["_cast_dtype"] = single.dtype
        return out

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """A validated batch in the metric's dtype (float64 or half input is converted, every metric alike)."""
        return x if x.dtype == self.dtype else x.to(self.dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.validate:
            validate_pair(x, y)
        return self.distance(self.as_input(x), self.as_input(y))

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(Bx, By) distances d(x_i, y_j) of every pair of validated batches; differentiable.

        The default evaluates :meth:`distance` on repeated pairs, a few million values at a time;
        metrics with a closed form override it."""
        per_call = max(1, _PAIR_VALUES // max(1, x[0].numel()))
        step = max(1, per_call // x.shape[0])
        parts = []
        for start in range(0, y.shape[0], step):
            g = y[start : start + step]
            xx = x.repeat_interleave(g.shape[0], dim=0)
            parts.append(self.distance(xx, g.repeat(x.shape[0], 1, 1, 1)).view(x.shape[0], g.shape[0]))
        return torch.cat(parts, dim=1)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}"


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear (differentiable) resize to size x size; identity when already that size."""
    return Resize(size)(x)


class EmbeddingMetric(Metric):
    """Turn any network ``f`` into a metric d(x, y) = 1 - cos(f(x), f(y)).

    The [0, 1] input is resized (``resizing``, a :class:`~robustsim.metrics.preprocess.Resize`; by default a
    bilinear squash to ``input_size``) and normalised by ``mean`` / ``std`` before ``net``. ``lipschitz``
    declares a guaranteed l2 Lipschitz constant of ``net`` alone, on its (preprocessed) input: the certifier
    multiplies it by the exact norm of the resize and by 1 / min(std) for the caller's image size.

    ``decisions`` says how its 2AFC decisions are taken: "plain" (compare the distances it computes) or
    "adaptive" (float32, and the float64 twin where float32 cannot resolve the exact decision:
    :mod:`robustsim.certify.adaptive`; ``robustsim.load_metric(name, dtype="adaptive")``).
    """

    decisions: str = "plain"

    def __init__(
        self,
        net: nn.Module,
        input_size: int | None = None,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        name: str = "embedding",
        lipschitz: float | None = None,
        validate: bool = True,
        resizing: Resize | None = None,
    ) -> None:
        super().__init__(validate=validate)
        if resizing is not None and input_size is not None and resizing.size != input_size:
            raise InputError(f"input_size {input_size} differs from the resize's size {resizing.size}; give one")
        self.net = net
        self.name = name
        self.resizing = resizing if resizing is not None else Resize(input_size)
        self.lipschitz = lipschitz
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1))

    @property
    def input_size(self) -> int | None:
        """The side of the square image the network sees (None: the caller's size)."""
        return self.resizing.size

    @input_size.setter
    def input_size(self, size: int | None) -> None:
        self.resizing = self.resizing.at(size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return (self.resizing(x) - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) un-normalised embedding."""
        if self.validate:
            validate_images(x)
        return self._embed(self.as_input(x))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding of an already validated batch; subclasses override this, not ``embed``."""
        return self.net(self.preprocess(x)).flatten(1)

    @staticmethod
    def embedding_distance(ex: torch.Tensor, ey: torch.Tensor) -> torch.Tensor:
        """1 - cos(ex, ey) per row, in [0, 2]; equals ||phi(x) - phi(y)||^2 / 2 for phi = e/||e||. Evaluated in float64
        and rounded once to the embeddings' dtype: the distance of the computed embeddings is then exact up to that
        one rounding (and ~1e-13), so a decision d1 < d0 is decided by the embeddings, not by the cosine's own
        float32 sums (:func:`robustsim.certify.rounding.cosine_slack`); a (B, D) product, no measurable cost."""
        d = 1.0 - F.cosine_similarity(ex.double(), ey.double(), dim=1, eps=1e-12)
        return d.clamp_min(0.0).to(torch.promote_types(ex.dtype, ey.dtype))

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(Bx, By) 1 - cos between every pair of embeddings."""
        ex = F.normalize(self._embed(x), dim=1, eps=1e-12)
        ey = F.normalize(self._embed(y), dim=1, eps=1e-12)
        return (1.0 - ex @ ey.T).clamp_min(0.0)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape == y.shape:
            ex, ey = self._embed(torch.cat([x, y])).split(x.shape[0])
        else:
            ex, ey = self._embed(x), self._embed(y)
        return self.embedding_distance(ex, ey)


def metric_arg(value: object, what: str = "metric") -> Metric:
    """A robustsim Metric (a zoo name is pointed at ``load_metric``)."""
    if isinstance(value, Metric):
        return value
    hint = f"robustsim.load_metric({value!r})" if isinstance(value, str) else "robustsim.load_metric('l2')"
    raise InputError(f"{what} must be a robustsim Metric, got {type(value).__name__}; build one with {hint}")
