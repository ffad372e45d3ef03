"""Converting LipSim's released checkpoints (github.com/SaraGhazanfari/lipsim) into ``LipSimNet``.

Their network (``L2LipschitzNetwork``, in ``NormalizedModel`` with mean 0 and std 1, wrapped in
``DataParallel``) is PaddingChannels(3 -> C) -> ``depth`` SLL convolutions (inner width ``conv_size``) ->
two AvgPool2d(4, divisor_override=4) -> flatten -> ``depth_linear`` SLL linear layers at the flattened width
(inner width ``n_features``) -> the first ``n_classes`` coordinates (1792 for the DreamSim teacher), at
224 px. That is ``LipSimNet`` with ``split=convs``, ``head="truncate"``, ``conv_inner=conv_size`` and mean 0.

How their layers use their parameters, and what the converter does about it:

- convolutions (``SDPBasedLipschitzConvLayer``): ``q`` is reshaped so that ``exp(-q)`` and ``exp(q)`` scale
  the *same* axis of |K^T K|; they cancel, and t_i = sum_j |K^T K|_ij. The converted layer therefore gets
  ``log_q = 0`` (which gives exactly that t), not their ``q``;
- linear layers (``SDPBasedLipschitzLinearLayer``): t_i = sum_j |W W^T|_ij q_j / q_i with q = exp(q), as
  ours with ``log_q = q``;
- biases are stored as (1, inner, 1, 1) / (1, inner) tensors; ours are (inner,).

A checkpoint's keys appear under ``module.model.base.1.<i>`` / ``module.model.convs.<i>`` (conv i) and
``module.model.base.2.<j>`` / ``module.model.linear.<j>`` (linear j - 1; index 0 is the Flatten), with a
``module.backbone.`` prefix in fine-tuned ones; the converter accepts all of these.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from robustsim.errors import WeightsError
from robustsim.metrics.preprocess import Resize
from robustsim.models.lipsim import LipSimMetric, LipSimNet, LipSimPreset

CONV = re.compile(r"(?:^|\.)(?:base\.1|convs)\.(\d+)\.(kernel|bias|q)$")
LINEAR = re.compile(r"(?:^|\.)(?:base\.2|linear)\.(\d+)\.(weight|bias|q)$")


def _layers(sd: dict[str, torch.Tensor], pattern: re.Pattern) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = pattern.search(key)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return out


def convert_lipsim_state(state: dict[str, torch.Tensor], n_classes: int = 1792, input_size: int = 224) -> LipSimNet:
    """A ``LipSimNet`` computing what the LipSim state dict ``state`` computes (module docstring)."""
    sd = state.get("model_state_dict", state) if isinstance(state, dict) else state
    convs = [v for _, v in sorted(_layers(sd, CONV).items())]
    linears = [v for _, v in sorted(_layers(sd, LINEAR).items())]
    if not convs or not linears or any(len(layer) != 3 for layer in [*convs, *linears]):
        raise WeightsError("not a LipSim checkpoint: no complete SLL conv and linear layers (kernel/weight, bias, q)")
    inner, channels = convs[0]["kernel"].shape[:2]
    width, flat = linears[0]["weight"].shape
    side = math.isqrt(flat // channels)
    if side * side * channels != flat or 16 * side != input_size:
        raise WeightsError(
            f"LipSim checkpoint: {flat} flattened features do not fit {channels} channels at {input_size} px"
        )
    preset = LipSimPreset(
        len(convs), int(channels), len(linears), int(width), conv_inner=int(inner), split=len(convs), head="truncate"
    )
    net = LipSimNet(preset, embed_dim=n_classes, input_size=input_size)
    ours = [m for m in net.features if hasattr(m, "log_q")] + [m for m in net.head if hasattr(m, "log_q")]
    with torch.no_grad():
        for layer, theirs in zip(ours, [*convs, *linears], strict=True):
            w = theirs.get("kernel", theirs.get("weight"))
            if layer.weight.shape != w.shape:
                raise WeightsError(
                    f"LipSim checkpoint: a layer of shape {tuple(w.shape)} where {tuple(layer.weight.shape)} fits"
                )
            layer.weight.copy_(w)
            layer.bias.copy_(theirs["bias"].reshape(-1))
            layer.log_q.copy_(theirs["q"] if "weight" in theirs else torch.zeros_like(layer.log_q))
    return net.eval()


LIPSIM_RESIZE = Resize(224, "bicubic", antialias=True)  # lipsim/core/utils.py get_preprocess_fn("DEFAULT")


def load_lipsim_release(
    path: str | os.PathLike,
    name: str = "lipsim",
    validate: bool = True,
    resizing: Resize | None = LIPSIM_RESIZE,
) -> LipSimMetric:
    """A released LipSim checkpoint at ``path`` (the zoo rows hand over the file the weights manager resolved) as a
    certifiable metric.

    The fine-tuned releases are LipSim's training checkpoints (``lipsim/core/trainer.py``: ``epoch``,
    ``global_step``, ``model_state_dict``, ``optimizer_state_dict``, whose learning rate is the numpy float of
    ``TriangularLRScheduler``); only ``model_state_dict`` is read, and no code is unpickled."""
    from robustsim.metrics.weights import read_checkpoint

    state = read_checkpoint(Path(path))  # a training checkpoint: model + optimizer state, numpy scalars allowed
    net = convert_lipsim_state(state)
    metric = LipSimMetric(net, name=name, mean=0.0, validate=validate, resizing=resizing)
    return metric.eval().requires_grad_(False)
