"""robustsim checkpoints: a folder with ``config.json`` and ``model.safetensors``; nothing is unpickled.

``config.json`` holds {"format": "robustsim-checkpoint", "version": 1, "model": <net config>, ...}
plus free-form metadata (teacher, data, epoch, metrics). Writes are atomic (temp folder + rename).
Loading never trusts the config: its sizes are bounded, the network is first built on the ``meta``
device (no memory) and its tensor shapes compared with the weight file's header, and every loaded
tensor must be finite.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from robustsim.errors import OutputError, WeightsError
from robustsim.models.lipsim import LipSimMetric, LipSimNet

FORMAT = "robustsim-checkpoint"
MAX_PARAMETERS = 2e9  # a config asking for more is refused before anything is allocated
ARCHS = {"lipsim": LipSimNet}


def _orphans(path: Path) -> list[Path]:
    """Temporary folders that interrupted saves of ``path`` left beside it (``.<name>.*``)."""
    keep = path.with_name(f".{path.name}.old")
    return [p for p in path.parent.glob(f".{path.name}.*") if p.is_dir() and (p != keep or path.is_dir())]


def clean_orphans(path: str | os.PathLike) -> None:
    """Remove what killed saves of ``path`` left behind (a ``.<name>.old`` is kept while ``path`` is
    missing: it is the previous complete version, see :func:`recover_checkpoint`)."""
    for p in _orphans(Path(path)):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    path: str | os.PathLike,
    net: LipSimNet,
    meta: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``path/`` atomically: the old folder stays intact until the new one is complete."""
    from safetensors.torch import save_file

    path = Path(path)
    if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
        raise WeightsError(f"{path} exists and is not a checkpoint folder; choose another path")
    from safetensors import SafetensorError

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        try:
            tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(tensors, str(tmp / "model.safetensors"))
            if extra_tensors:
                extra = {k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}
                save_file(extra, str(tmp / "state.safetensors"))
            cfg = {"format": FORMAT, "version": 1, "model": net.config(), **(meta or {})}
            (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        except (OSError, SafetensorError) as err:  # a full disk: the previous checkpoint stays as it was
            why = getattr(err, "strerror", None) or str(err).split("\n")[0][:120]
            raise OutputError(
                f"cannot save the checkpoint {path} ({why}); free some space, the previous one is intact"
            ) from None
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def recover_checkpoint(path: str | os.PathLike) -> Path | None:
    """``path`` if it exists; else the previous complete version a save interrupted mid-swap left as
    ``.<name>.old`` (moved back into place); else None."""
    path = Path(path)
    if path.exists():
        return path
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and _complete(old):
        old.rename(path)
        return path
    return None


def read_config(path: Path) -> dict[str, Any]:
    """``path/config.json`` as a dict whose ``model`` names a known architecture (WeightsError otherwise)."""
    cfg_path = path / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(
            f"{cfg_path} is missing; a checkpoint folder needs config.json and model.safetensors"
        ) from None
    except UnicodeDecodeError:
        raise WeightsError(f"{cfg_path} is not UTF-8 text; restore it from a good copy") from None
    except json.JSONDecodeError as err:
        raise WeightsError(
            f"{cfg_path} is not valid JSON ({err.msg} at line {err.lineno}); restore it from a good copy"
        ) from None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or not isinstance(model, dict):
        raise WeightsError(f"{cfg_path} is not a robustsim checkpoint config (format/model missing or malformed)")
    if not isinstance(model.get("arch"), str) or model["arch"] not in ARCHS:
        raise WeightsError(f"{cfg_path}: unknown model.arch {model.get('arch')!r}; expected one of {', '.join(ARCHS)}")
    return cfg


def weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, without reading the tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise WeightsError(f"{weights} is missing; the checkpoint is incomplete") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{weights} is corrupt or truncated ({err}); use the last good checkpoint") from None


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], weights: Path) -> None:
    """WeightsError naming the first missing, unexpected or mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise WeightsError(f"{weights} does not match its config ({what}); the files belong to different models")
    bad = [k for k in expected if expected[k] != found[k]]
    if bad:
        raise WeightsError(
            f"{weights}: {bad[0]} has shape {found[bad[0]]}, config expects "
            f"{expected[bad[0]]}; the files belong to different models"
        )


def load_net(path: str | os.PathLike) -> tuple[LipSimNet, dict[str, Any]]:
    """Rebuild the network from ``config.json`` and load ``model.safetensors`` strictly (shapes checked
    against the header before any allocation, tensors checked finite)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    arch = ARCHS[cfg["model"]["arch"]]
    try:
        with torch.device("meta"):  # no memory: a config claiming huge sizes costs nothing here
            skeleton = arch.from_config(cfg["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise WeightsError(f"{path / 'config.json'} has a bad model config ({err}); re-save the checkpoint") from None
    except RuntimeError:  # a layer that cannot be built on the meta device (orthogonium): bound it, then build
        size = arch.parameter_count(cfg["model"])
        if size > MAX_PARAMETERS:
            raise WeightsError(
                f"{path / 'config.json'} asks for {size:.3g} parameters (over {MAX_PARAMETERS:.0e}); "
                "re-save the checkpoint"
            ) from None
        skeleton = arch.from_config(cfg["model"])
    weights = path / "model.safetensors"
    check_shapes({k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, weight_shapes(weights), weights)
    try:
        sd = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - any failure to read is a corrupt file
        raise WeightsError(f"{weights} is corrupt or truncated ({err}); use the last good checkpoint") from None
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{weights}: tensor {bad[0]} holds NaN or inf; the checkpoint is broken, use a good copy")
    net = arch.from_config(cfg["model"])
    net.load_state_dict(sd)
    return net.eval(), cfg


def _display_name(cfg: dict[str, Any], path: Path) -> str:
    name = cfg.get("name")
    if isinstance(name, str) and name and name.isprintable() and len(name) <= 200:
        return name
    return path.name


def load_checkpoint_metric(path: Path) -> LipSimMetric | None:
    """Checkpoint loader for ``load_metric``: None when ``path`` is not a checkpoint folder. The metric is
    frozen (one fixed function: :meth:`LipSimNet.freeze`), in eval mode, without weight gradients."""
    path = recover_checkpoint(path) or path
    if not (path.is_dir() and (path / "config.json").is_file()):
        return None
    net, cfg = load_net(path)
    metric = LipSimMetric(net.freeze(), name=_display_name(cfg, path))
    return metric.eval().requires_grad_(False)
