"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, with its backbone from the weights manager.

The learned 1x1 heads ship in the lpips wheel; the AlexNet / VGG16 / SqueezeNet backbone is torchvision's
ImageNet file (``weights=``: the zoo rows hand over the file the weights manager resolved). R-LPIPS (Ghazanfari
et al. 2023) is the same AlexNet LPIPS with adversarially trained heads (``heads=``).
"""

from __future__ import annotations

import os
import warnings

import torch

from robustsim.compat import import_optional
from robustsim.errors import InputError, WeightsError
from robustsim.metrics.base import Metric
from robustsim.metrics.weights import load_state_dict, resolve_weights

BACKBONES = ("alex", "vgg", "squeeze")


def lpips_backbone_state(
    net: str, features_sd: dict[str, torch.Tensor], lp: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Map torchvision ``features.{i}.*`` keys onto lpips' ``net.slice{k}.{i}.*`` layout."""
    where = {}
    for slice_name, sl in lp.net.named_children():
        for child in sl._modules:
            where[child] = slice_name
    out = {}
    for key, value in features_sd.items():
        parts = key.split(".")
        if parts[0] != "features" or parts[1] not in where:
            continue
        out[".".join(["net", where[parts[1]], *parts[1:]])] = value
    return out


class LPIPSMetric(Metric):
    """LPIPS distance on [0, 1] images (mapped to [-1, 1] internally), backbone ``alex|vgg|squeeze``.

    ``weights=`` the backbone's torchvision file (``robustsim.load_metric("lpips-alex")`` passes the one the
    weights manager resolved); ``heads=`` an LPIPS state dict replacing the wheel's heads (R-LPIPS);
    ``pretrained=False`` keeps a random backbone (tests only).
    """

    def __init__(
        self,
        net: str = "alex",
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        heads: str | os.PathLike | None = None,
        name: str | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        if net not in BACKBONES:
            raise InputError(f"unknown LPIPS backbone {net!r}; choose one of {sorted(BACKBONES)}")
        lpips = import_optional("lpips")
        self.name = name or f"lpips-{net}"
        with warnings.catch_warnings():  # lpips builds its backbone with torchvision's deprecated pretrained=
            warnings.simplefilter("ignore", UserWarning)
            self.lp = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        if pretrained:
            hint = f"pass weights=PATH, or build it with robustsim.load_metric({self.name!r})"
            path = resolve_weights(self.name, weights, [], f"no backbone weights given; {hint}")
            sd = lpips_backbone_state(net, load_state_dict(path), self.lp)
            missing = [k for k in self.lp.net.state_dict() if "net." + k not in sd]
            if missing:
                raise WeightsError(
                    f"{self.name}: {path} lacks backbone tensors such as {missing[0]}; pass torchvision's "
                    f"ImageNet {net} weights"
                )
            self.lp.load_state_dict(sd, strict=False)
        if heads is not None:
            head_sd = load_state_dict(heads)
            unknown = [k for k in head_sd if k not in self.lp.state_dict()]
            if unknown or not any(k.startswith("lin") for k in head_sd):
                raise WeightsError(
                    f"{self.name}: {heads} is not an LPIPS state dict (e.g. {(unknown or ['no lin*'])[0]})"
                )
            self.lp.load_state_dict(head_sd, strict=False)
        self.lp.eval().requires_grad_(False)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lp(x, y, normalize=True).flatten()
