"""robustsim checkpoints: a folder with ``config.json`` and ``model.safetensors``; nothing is unpickled.

``config.json`` holds {"format": "robustsim-checkpoint", "version": 1, "model": <net config>, ...}
plus free-form metadata (teacher, data, epoch, metrics). Writes are atomic (temp folder + rename).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from robustsim.errors import WeightsError
from robustsim.models.lipsim import LipSimMetric, LipSimNet

FORMAT = "robustsim-checkpoint"
ARCHS = {"lipsim": LipSimNet}


def save_checkpoint(
    path: str | os.PathLike,
    net: LipSimNet,
    meta: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``path/`` atomically: the old folder stays intact until the new one is complete."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        if extra_tensors:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, str(tmp / "state.safetensors")
            )
        cfg = {"format": FORMAT, "version": 1, "model": net.config(), **(meta or {})}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def recover_checkpoint(path: str | os.PathLike) -> Path | None:
    """``path`` if it exists; else the previous version a save interrupted mid-swap left as ``.<name>.old``
    (moved back into place); else None."""
    path = Path(path)
    if path.exists():
        return path
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and (old / "config.json").is_file():
        old.rename(path)
        return path
    return None


def read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise WeightsError(
            f"{cfg_path} is missing; a checkpoint folder needs config.json and model.safetensors"
        ) from None
    except json.JSONDecodeError as err:
        raise WeightsError(
            f"{cfg_path} is not valid JSON ({err.msg} at line {err.lineno}); restore it from a good copy"
        ) from None
    if cfg.get("format") != FORMAT or cfg.get("model", {}).get("arch") not in ARCHS:
        raise WeightsError(f"{cfg_path} is not a robustsim checkpoint config (format/model.arch missing or unknown)")
    return cfg


def load_net(path: str | os.PathLike) -> tuple[LipSimNet, dict[str, Any]]:
    """Rebuild the network from ``config.json`` and load ``model.safetensors`` strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    try:
        net = ARCHS[cfg["model"]["arch"]].from_config(cfg["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{path / 'config.json'} has a bad model config ({err}); re-save the checkpoint") from None
    weights = path / "model.safetensors"
    try:
        sd = load_file(str(weights))
    except FileNotFoundError:
        raise WeightsError(f"{weights} is missing; the checkpoint is incomplete") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{weights} is corrupt or truncated ({err}); use the last good checkpoint") from None
    expected = net.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise WeightsError(f"{weights} does not match its config ({what}); the files belong to different models")
    bad = [k for k in expected if expected[k].shape != sd[k].shape]
    if bad:
        raise WeightsError(
            f"{weights}: {bad[0]} has shape {tuple(sd[bad[0]].shape)}, config expects "
            f"{tuple(expected[bad[0]].shape)}; the files belong to different models"
        )
    net.load_state_dict(sd)
    return net.eval(), cfg


def load_checkpoint_metric(path: Path) -> LipSimMetric | None:
    """Checkpoint loader for ``load_metric``: None when ``path`` is not a checkpoint folder."""
    path = recover_checkpoint(path) or path
    if not (path.is_dir() and (path / "config.json").is_file()):
        return None
    net, cfg = load_net(path)
    metric = LipSimMetric(net, name=cfg.get("name", path.name))
    return metric.eval().requires_grad_(False)
