"""The two training commands as functions: build data, teacher, student and task, then :func:`fit`.

``distill(...)`` and ``finetune(...)`` are what ``robustsim train distill|finetune`` call; both
end with a summary (clean 2AFC and certified accuracy at three l2 epsilons on ``eval_data``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import torch

from robustsim.cache import cache_root
from robustsim.data.specs import open_images, open_triplets
from robustsim.errors import RobustsimError
from robustsim.limits import torchrun_env
from robustsim.models.checkpoint import load_net
from robustsim.models.lipsim import PRESETS, LipSimMetric, LipSimNet
from robustsim.text import visible
from robustsim.train.dist import barrier, init_distributed
from robustsim.train.distill import DistillTask
from robustsim.train.finetune import LOSSES, FinetuneTask, validation_figures
from robustsim.train.loop import RunConfig, claim_run, fit
from robustsim.train.teacher import load_teacher, teacher_targets

SUMMARY_EPS = (36 / 255, 72 / 255, 108 / 255)
DEFAULT_TEACHER = "dinov2-s14+effnet-lite0"


def _cache_dir() -> Path:
    return cache_root() / "teachers"


def default_val(spec: str) -> str | None:
    """The validation split that goes with a training spec (mini -> mini:val, nights:P -> nights:P:val)."""
    if spec in ("mini", "mini:train"):
        return "mini:val"
    kind, _, rest = spec.partition(":")
    if kind in ("nights", "bapps") and rest:
        return f"{kind}:{rest.split(':')[0]}:val"
    return None


def summary(metric: LipSimMetric, eval_data: str, seconds: float) -> dict[str, Any]:
    figures = validation_figures(metric, open_triplets(eval_data, size=metric.input_size), list(SUMMARY_EPS))
    return {"data": eval_data, **figures, "seconds": seconds}


def summary_line(s: dict[str, Any]) -> str:
    cert = ", ".join(f"{k.split('@', 1)[1]}: {100 * v:.1f}" for k, v in s.items() if k.startswith("certified@"))
    return f"{s['data']}: clean 2AFC {100 * s['clean']:.1f}, certified (l2) {cert}; {s['seconds']:.0f} s"


def distill(
    out: str | os.PathLike,
    teacher: str = DEFAULT_TEACHER,
    student: str = "tiny",
    images: str = "mini",
    val_images: str | None = "auto",
    input_size: int = 64,
    eval_data: str = "mini:val",
    cache_dir: str | os.PathLike | None = None,
    teacher_batch_size: int = 64,
    limit: int | None = None,
    layer: str = "sll",
    **run: Any,
) -> dict[str, Any]:
    """Distil ``teacher`` into a LipSimNet ``student`` preset; returns the run summary."""
    if student not in PRESETS:
        raise RobustsimError(f"unknown --student {student!r}; choose one of {', '.join(PRESETS)}")
    if input_size % 16:
        raise RobustsimError(f"--input-size {input_size} is not a multiple of 16 (two 4x4 poolings); try 64")
    cfg = RunConfig(out=str(out), **run)
    with claim_run(cfg):  # refuse a taken --out before the teacher cache is computed
        return _distill(
            cfg,
            teacher,
            student,
            images,
            val_images,
            input_size,
            eval_data,
            cache_dir,
            teacher_batch_size,
            limit,
            layer,
        )


def _distill(
    cfg: RunConfig,
    teacher: str,
    student: str,
    images: str,
    val_images: str | None,
    input_size: int,
    eval_data: str,
    cache_dir: str | os.PathLike | None,
    teacher_batch_size: int,
    limit: int | None,
    layer: str,
) -> dict[str, Any]:
    from dataclasses import replace

    from robustsim.nn import layer_kind

    layer_kind(layer)
    env = init_distributed(torch.device(cfg.device))
    device = env.device
    train_images = open_images(images, input_size)
    if limit is not None:
        train_images = train_images.subset(limit)
    if val_images == "auto":
        val_images = "mini:val" if images in ("mini", "mini:train") else None
    held_out = open_images(val_images, input_size) if val_images else None
    if held_out is not None and limit is not None:  # a trial run's check costs what its training does
        held_out = held_out.subset(limit)
    cache = Path(cache_dir) if cache_dir else _cache_dir()
    if not env.main:
        barrier(env)  # rank 0 fills the teacher cache first; the others then read it
    t = load_teacher(teacher, train_images, device)
    show = cfg.progress and env.main
    targets = teacher_targets(t, train_images, cache, teacher_batch_size, device, show)
    val_targets = teacher_targets(t, held_out, cache, teacher_batch_size, device, show) if held_out else None
    del t
    if env.main:
        barrier(env)
    torch.manual_seed(cfg.seed)
    preset = student if layer == PRESETS[student].layer else replace(PRESETS[student], layer=layer)
    net = LipSimNet(preset, embed_dim=int(targets.shape[1]), input_size=input_size)
    eval_set = open_triplets(eval_data, size=input_size, limit=limit) if eval_data else None  # per-epoch checks
    task = DistillTask(
        train_images,
        targets,
        held_out,
        val_targets,
        meta={"teacher": teacher, "data": images, "embed_dim": int(targets.shape[1]), "layer": layer,
              "val_images": val_images, "limit": limit, "data_identity": train_images.identity},  # fmt: skip
        evaluate_2afc=(lambda m: validation_figures(m, eval_set, [SUMMARY_EPS[0]], refine=False)) if eval_set else None,
    )
    result = fit(net, task, cfg)
    return _finish(net, cfg, eval_data, result)


def finetune(
    out: str | os.PathLike,
    init: str | os.PathLike,
    data: str = "mini",
    val: str | None = "auto",
    margin: float = 0.5,
    select: Literal["clean", "certified"] = "certified",
    select_eps: float = 36 / 255,
    eval_data: str | None = "mini:val",
    limit: int | None = None,
    loss: str = "hinge",
    target_eps: float = 36 / 255,
    radius_weight: float = 1.0,
    **run: Any,
) -> dict[str, Any]:
    """Fine-tune the checkpoint ``init`` on 2AFC ``data`` with the hinge loss; returns the run summary."""
    run.setdefault("epochs", 1)
    run.setdefault("batch_size", 32)
    run.setdefault("lr", 1e-3)
    cfg = RunConfig(out=str(out), **run)
    with claim_run(cfg):
        objective = {"loss": loss, "target_eps": target_eps, "radius_weight": radius_weight}
        return _finetune(cfg, init, data, val, margin, select, select_eps, eval_data, limit, objective)


def _finetune(
    cfg: RunConfig,
    init: str | os.PathLike,
    data: str,
    val: str | None,
    margin: float,
    select: Literal["clean", "certified"],
    select_eps: float,
    eval_data: str | None,
    limit: int | None,
    objective: dict[str, Any],
) -> dict[str, Any]:
    from robustsim.certify.lipschitz import input_lipschitz

    if objective["loss"] not in LOSSES:
        raise RobustsimError(f"unknown --loss {objective['loss']!r}; choose one of {', '.join(LOSSES)}")
    net, init_cfg = load_net(init)
    net.thaw()  # a frozen (shipped or exported) checkpoint trains from its weights
    spec = "mini:train" if data == "mini" else data
    if val == "auto":
        val = default_val(spec)
        if val is None:
            raise RobustsimError(f"no validation split is known for {data!r}; pass --val SPEC")
    assert val is not None
    train_set = open_triplets(spec, size=net.input_size, limit=limit)
    size = net.input_size
    task = FinetuneTask(
        train_set,
        open_triplets(val, size=size, limit=limit),  # a trial run's checks cost what its training does
        margin,
        select,
        select_eps,
        meta={"teacher": init_cfg.get("teacher"), "data": data, "init": str(init), "margin": margin, **objective,
              "val": val, "select": select, "select_eps": select_eps, "limit": limit,
              "data_identity": train_set.identity},  # fmt: skip
        objective=objective["loss"],
        target_eps=objective["target_eps"],
        radius_weight=objective["radius_weight"],
        lipschitz=input_lipschitz(LipSimMetric(net), (size, size))[0],
    )
    result = fit(net, task, cfg)
    return _finish(net, cfg, val if eval_data is None else eval_data, result)  # "": no final summary


def _finish(net: LipSimNet, cfg: RunConfig, eval_data: str | None, result: dict[str, Any]) -> dict[str, Any]:
    if torchrun_env()[0] != 0 or not eval_data:
        return result
    metric = LipSimMetric(net.eval(), name=Path(cfg.out).name)
    if cfg.progress:
        print(visible(f"robustsim: final evaluation of {metric.name} on {eval_data}"), file=sys.stderr)
    result["summary"] = summary(metric, eval_data, result["seconds"])
    return result
