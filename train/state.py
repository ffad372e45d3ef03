"""Training state as tensors + JSON (no pickles): optimizer moments, step counters, RNG.

``pack_state`` flattens an optimizer's ``state_dict`` and the torch RNG into a name -> tensor dict
(saved beside the weights as ``state.safetensors``) plus a JSON-able dict; ``unpack_state`` restores
them exactly, so ``--resume`` continues bit-for-bit.
"""

from __future__ import annotations

from typing import Any

import torch

from robustsim.errors import WeightsError


def pack_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    scalars: dict[str, dict[str, float]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unpack_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    try:
        state: dict[int, dict[str, Any]] = {}
        for name, t in tensors.items():
            if name.startswith("opt."):
                _, pid, key = name.split(".", 2)
                state.setdefault(int(pid), {})[key] = t
        for pid, vals in meta["scalars"].items():
            state.setdefault(int(pid), {}).update(vals)
        params = [p for g in opt.param_groups for p in g["params"]]
        for pid, vals in state.items():
            for key, t in vals.items():
                want = () if key == "step" else tuple(params[pid].shape)
                if isinstance(t, torch.Tensor) and (tuple(t.shape) != want or not t.is_floating_point()):
                    raise ValueError(f"{key} of parameter {pid} has shape {tuple(t.shape)}, not {want}")
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
        opt.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise WeightsError(
            f"the checkpoint's training state does not fit this run ({err}); start without --resume"
        ) from None
