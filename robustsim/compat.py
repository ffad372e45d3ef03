"""Make torchvision (and lpips, timm, open_clip, which import it) importable on a CPU-only torch.

torchvision's compiled ops fail to load against some torch builds, and its Python side then dies at
import with "operator torchvision::nms does not exist". Registering the two op *schemas* (no kernels)
lets the pure-Python parts import; calling nms itself still fails loudly. The patch is applied only
when the real ops are missing. Every import of these libraries in robustsim goes through here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from robustsim.errors import MissingPackageError

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
#: libraries that import torchvision (directly or through timm / open_clip)
TORCHVISION_USERS = {"torchvision", "lpips", "timm", "open_clip", "torchattacks", "dreamsim", "piq", "DISTS_pytorch"}
_library: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def patch_torchvision_ops() -> bool:
    """Register missing torchvision op schemas; return True when a patch was applied."""
    global _library
    try:
        import torchvision.extension  # noqa: F401  (loads the compiled ops when they work)
    except Exception:  # the import itself may be what fails
        pass
    missing = [n for n in _SCHEMAS if not _op_exists(n)]
    if not missing:
        return False
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
    for name in missing:
        _library.define(_SCHEMAS[name])
    return True


def import_optional(module: str, extra: str = "zoo") -> ModuleType:
    """Import a torchvision-dependent library, applying the CPU patch first.

    Raises MissingPackageError (an ImportError and a one-line RobustsimError) naming the pip extra
    to install when the library is absent.
    """
    if module.split(".")[0] in TORCHVISION_USERS:
        patch_torchvision_ops()
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise MissingPackageError(
            f"{module} is not installed; install it with: pip install 'robustsim[{extra}]' "
            "torch==2.13.0 torchvision==0.28.0"
        ) from err
