"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, with backbone weights from a local file.

The learned 1x1 heads ship in the lpips wheel; the AlexNet/VGG16/SqueezeNet backbone comes from
torchvision's cache (``$TORCH_HOME/hub/checkpoints``) or ``weights=``. Nothing is downloaded.
"""

from __future__ import annotations

import os

import torch

from robustsim.compat import import_optional
from robustsim.errors import WeightsError
from robustsim.metrics.base import Metric
from robustsim.metrics.weights import load_state_dict, resolve_weights, torch_hub_checkpoint

BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


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

    ``pretrained=False`` keeps a random backbone (for tests and loss experiments only).
    """

    def __init__(
        self,
        net: str = "alex",
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        if net not in BACKBONE_FILES:
            raise ValueError(f"unknown LPIPS backbone {net!r}; choose one of {sorted(BACKBONE_FILES)}")
        lpips = import_optional("lpips")
        self.name = f"lpips-{net}"
        self.lp = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        if pretrained:
            path = resolve_weights(
                self.name,
                weights,
                [torch_hub_checkpoint(BACKBONE_FILES[net])],
                f"copy torchvision's {BACKBONE_FILES[net]} there or pass weights=PATH",
            )
            sd = lpips_backbone_state(net, load_state_dict(path), self.lp)
            missing = [k for k in self.lp.net.state_dict() if "net." + k not in sd]
            if missing:
                raise WeightsError(
                    f"{self.name}: {path} lacks backbone tensors such as {missing[0]}; "
                    f"pass torchvision's {BACKBONE_FILES[net]}"
                )
            self.lp.load_state_dict(sd, strict=False)
        self.lp.eval().requires_grad_(False)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lp(x, y, normalize=True).flatten()
