"""Route third-party downloads through the weights manager while a model is built.

torchvision, piq and DreamSim fetch weights themselves (``torch.hub.load_state_dict_from_url``) and DreamSim
builds DINO through ``torch.hub.load`` (code from GitHub). Inside :func:`managed_downloads`, a URL whose file
name is in the manifest resolves through :func:`robustsim.weights.resolve` (pinned, verified, offline-aware)
and is read with ``weights_only=True``; any other URL is refused; ``torch.hub.load`` of DINO builds the ViT
from DreamSim's own copy of DINO's ``vision_transformer`` with the manifest's backbone file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch

from robustsim.compat import import_optional
from robustsim.errors import WeightsError

#: DINO's hub entry points: (architecture in vision_transformer, patch size)
DINO_ARCHS = {
    "dino_vits16": ("vit_small", 16),
    "dino_vits8": ("vit_small", 8),
    "dino_vitb16": ("vit_base", 16),
    "dino_vitb8": ("vit_base", 8),
}


def _state_dict_from(name: str, progress: bool) -> dict:
    from robustsim.weights import manifest, resolve

    if name not in manifest():
        raise WeightsError(f"{name} is not in robustsim's weights manifest, so robustsim will not download it")
    return torch.load(resolve(name, progress=progress), map_location="cpu", weights_only=True)


@contextlib.contextmanager
def managed_downloads(dino_backbones: dict[str, Path] | None = None, progress: bool = True) -> Iterator[None]:
    """Patch torch.hub (and torchvision's copy of it) for the duration of a model's construction."""
    tv_api = import_optional("torchvision.models._api")

    real_url, real_tv, real_load = torch.hub.load_state_dict_from_url, tv_api.load_state_dict_from_url, torch.hub.load

    def from_url(url: str, *args, **kwargs) -> dict:
        return _state_dict_from(os.path.basename(urlparse(url).path), progress)

    def hub_load(repo: str, model: str, *args, **kwargs):
        if repo.startswith("facebookresearch/dino") and not repo.startswith("facebookresearch/dinov2"):
            from dreamsim.feature_extraction import vision_transformer as vits

            if model not in DINO_ARCHS:
                raise WeightsError(f"DINO model {model!r} is not supported; use one of {', '.join(DINO_ARCHS)}")
            arch, patch = DINO_ARCHS[model]
            net = getattr(vits, arch)(patch_size=patch, num_classes=0)
            path = (dino_backbones or {}).get(model)
            if path is None:
                raise WeightsError(
                    f"no backbone weights for {model}; robustsim ships only dino_vitb16 (dino-vitb16.pth)"
                )
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net
        raise WeightsError(f"torch.hub.load({repo!r}) would download code; robustsim does not run it")

    hub_dir = getattr(torch.hub, "_hub_dir", None)  # DreamSim's extractor calls torch.hub.set_dir: undo it after
    torch.hub.load_state_dict_from_url = from_url
    tv_api.load_state_dict_from_url = from_url
    torch.hub.load = hub_load
    try:
        yield
    finally:
        torch.hub.load_state_dict_from_url, torch.hub.load = real_url, real_load
        tv_api.load_state_dict_from_url = real_tv
        torch.hub._hub_dir = hub_dir
