"""The training loop both recipes share: schedule, DDP, checkpoints (last/best), exact resume, logs.

Every random choice is a function of (seed, epoch, step): the data order of epoch e is
``randperm(n, seed(e))``; augmentations use ``step_generator(seed, step)`` over the *global* batch,
of which process r takes rows r::world. So one process, several ``torchrun`` processes with the same
global batch, and a run resumed from any saved step all see the same samples and views.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import robustsim
from robustsim.errors import RobustsimError
from robustsim.io import OutputDir, atomic_write, inside, read_inside
from robustsim.limits import torchrun_env
from robustsim.models.checkpoint import clean_orphans, load_net, recover_checkpoint, save_checkpoint
from robustsim.models.lipsim import LipSimMetric, LipSimNet
from robustsim.text import visible
from robustsim.threads import follow_machine
from robustsim.train.augment import step_generator
from robustsim.train.dist import DistEnv, all_mean, barrier, init_distributed, shutdown
from robustsim.train.state import pack_state, unpack_state

#: settings a resumed run must share with the run it continues
RESUME_KEYS = ("epochs", "batch_size", "lr", "warmup", "seed", "max_steps")


@dataclass
class RunConfig:
    out: str
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.01
    warmup: float = 0.05
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    save_every: int = 0
    resume: bool = False
    force: bool = False  # with resume: continue although a setting differs from the saved run's (logged)
    progress: bool = True
    max_steps: int | None = None  # stop (and validate, save) after this many steps; the schedule spans them


class Task(Protocol):
    """What a recipe plugs into :func:`fit`."""

    name: str
    dataset: Dataset
    meta: dict[str, Any]

    def loss(self, model: nn.Module, batch: Any, gen: torch.Generator, rows: slice, total: int) -> torch.Tensor:
        """Mean loss over this process's rows of the global batch (a mean, so DDP averaging is exact)."""
        ...

    def evaluate(self, metric: LipSimMetric) -> tuple[dict[str, float], float]:
        """Validation figures and the selection score (higher is better)."""
        ...


class Embedder(nn.Module):
    """``metric._embed`` as a module's forward, so DDP's gradient hooks see the call."""

    def __init__(self, metric: LipSimMetric) -> None:
        super().__init__()
        self.metric = metric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.metric._embed(x)


def lr_at(step: int, total: int, warmup: float, base: float) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to 0."""
    w = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < w:
        return base * (step + 1) / w
    progress = (step - w) / max(1, total - w)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class _Log:
    path: Path | None

    def write(self, **rec: Any) -> None:
        """Append one record to the run's log, never through a link planted as the log (:func:`robustsim.io.inside`)."""
        if self.path is not None:
            inside(self.path.parent, self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            with os.fdopen(fd, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


RUN_FILES = ("last", "best", "log.jsonl")


@contextmanager
def claim_run(cfg: RunConfig) -> Iterator[None]:
    """The main process claims the run folder for the whole run (the same lock and checks as every report
    folder, :class:`robustsim.io.OutputDir`): a folder holding a run is refused unless ``resume``, a
    second live run into it is refused, and what killed checkpoint saves left behind is removed."""
    if torchrun_env()[0] != 0:
        yield
        return
    out = Path(cfg.out)
    hint = "pass --resume to continue it or choose another --out"
    with OutputDir(out, () if cfg.resume else RUN_FILES, hint=hint):
        for name in ("last", "best"):
            clean_orphans(out / name)
        yield


def fit(net: LipSimNet, task: Task, cfg: RunConfig) -> dict[str, Any]:
    """Train ``net`` on ``task``; writes ``out/last``, ``out/best``, ``out/log.jsonl``; returns the summary."""
    env = init_distributed(torch.device(cfg.device))
    try:
        with claim_run(cfg):
            summary = _fit(net, task, cfg, env)
        barrier(env)  # no rank tears its sockets down while a peer is still inside a collective
        return summary
    finally:
        shutdown(env)


def _fit(net: LipSimNet, task: Task, cfg: RunConfig, env: DistEnv) -> dict[str, Any]:
    out = Path(cfg.out)
    n, batch = len(task.dataset), cfg.batch_size
    if batch % env.world:
        raise RobustsimError(f"--batch-size {batch} is not divisible by the {env.world} processes; use a multiple")
    steps_per_epoch = n // batch
    if steps_per_epoch == 0:
        raise RobustsimError(f"--batch-size {batch} is larger than the {n} training items; lower it")
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    net.to(env.device)
    metric = LipSimMetric(net, name=out.name, validate=False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    start, best = 0, -math.inf
    if cfg.resume:
        start, best = _resume(out, net, opt, cfg, total, task)
    model: nn.Module = Embedder(metric)
    if env.world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    log = _Log(out / "log.jsonl" if env.main else None)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        log.write(event="resume" if start else "start", step=start, total=total, world=env.world, config=asdict(cfg))

    def validate(epoch: int, step: int) -> tuple[dict[str, float], float]:
        net.eval()
        figures, score = task.evaluate(metric)
        net.train()
        threads = follow_machine()  # the next epoch runs on what the machine has free now (unless pinned)
        log.write(event="epoch", epoch=epoch, step=step, threads=threads, **figures)
        return figures, score

    if start == 0 and getattr(task, "select_from_init", False) and env.main:
        # the starting weights are a selection candidate: best/ is never worse than the init
        init_metrics, best = validate(0, 0)
        save_checkpoint(out / "best", net, _named(_meta(task, cfg, 0, steps_per_epoch, best, init_metrics), "best"))
    barrier(env)
    rows = slice(env.rank, None, env.world)
    desc = visible(f"{task.name} {out.name}")
    bar = tqdm(total=total, initial=start, desc=desc, disable=not (cfg.progress and env.main))
    t0, last_metrics, batches = time.perf_counter(), {}, None
    for gs in range(start, total):
        epoch, k = divmod(gs, steps_per_epoch)
        if batches is None or k == 0:
            perm = torch.randperm(n, generator=step_generator(cfg.seed, epoch, salt=1))
            order = [perm[j * batch : (j + 1) * batch][rows].tolist() for j in range(k, steps_per_epoch)]
            loader = DataLoader(task.dataset, batch_sampler=order, num_workers=cfg.workers)
            batches = iter(loader)
        lr = lr_at(gs, total, cfg.warmup, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        loss = task.loss(model, next(batches), step_generator(cfg.seed, gs), rows, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(all_mean(loss.detach(), env))
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2g}")
        bar.update()
        log.write(event="step", step=gs + 1, epoch=epoch, loss=value, lr=lr, seconds=round(time.perf_counter() - t0, 4))
        end_of_epoch = k == steps_per_epoch - 1 or gs + 1 == total  # a --max-steps run ends like an epoch
        if end_of_epoch or (cfg.save_every and (gs + 1) % cfg.save_every == 0):
            if env.main:
                meta = _meta(task, cfg, gs + 1, steps_per_epoch, best, last_metrics)
                if end_of_epoch:
                    last_metrics, score = validate(epoch + 1, gs + 1)
                    meta["metrics"] = last_metrics
                    if score > best:
                        best = score
                        meta["training"]["best"] = best
                        save_checkpoint(out / "best", net, _named(meta, "best"))
                tensors, opt_meta = pack_state(opt)
                meta["training"]["optimizer"] = opt_meta
                save_checkpoint(out / "last", net, _named(meta, "last"), extra_tensors=tensors)
            barrier(env)
    bar.close()
    return {"steps": total, "seconds": time.perf_counter() - t0, "metrics": last_metrics, "best": best}


def _meta(task: Task, cfg: RunConfig, step: int, steps_per_epoch: int, best: float, metrics: dict) -> dict[str, Any]:
    return {
        "name": Path(cfg.out).name,
        "package_version": robustsim.__version__,
        "normalisation": {"mean": 0.5, "std": 1.0},
        "task": task.name,
        **task.meta,
        "epoch": step // steps_per_epoch,
        "metrics": metrics,
        "training": {"global_step": step, "best": best if math.isfinite(best) else None, "config": asdict(cfg)},
    }


def _named(meta: dict[str, Any], which: str) -> dict[str, Any]:
    """``meta`` for the ``which`` checkpoint (best, last): it loads as the metric ``<run>-<which>``, so the two
    checkpoints of one run are told apart in every report."""
    return {**meta, "name": f"{meta['name']}-{which}"}


def _truncate_log(path: Path, step: int) -> None:
    """Drop the records a killed run wrote after its last checkpoint (step > ``step``), so a resumed
    run's log has each step once."""
    raw = read_inside(path.parent, path)  # a link or a FIFO planted as the log: one line, never followed
    if raw is None:
        return
    kept = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        at = rec.get("step") if isinstance(rec, dict) else None
        if isinstance(at, int) and not isinstance(at, bool) and 0 <= at <= step:  # an edited record is dropped
            kept.append(line)
    atomic_write(path, lambda tmp: tmp.write_text("".join(f"{ln}\n" for ln in kept)), within=path.parent)


def _changed_settings(meta: dict[str, Any], cfg: RunConfig, task: Task) -> list[str]:
    """``--flag: saved -> now`` for every setting that decides the result and differs from the saved run's: the
    run's schedule (RESUME_KEYS) and the task's own (teacher, data and its content, margin, loss, validation...)."""
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    old = training.get("config") if isinstance(training.get("config"), dict) else {}
    now = asdict(cfg)
    pairs = [(k, old.get(k), now[k]) for k in RESUME_KEYS] + [(k, meta.get(k), v) for k, v in task.meta.items()]
    return [f"--{k.replace('_', '-')}: {a!r:.60} -> {b!r:.60}" for k, a, b in pairs if a != json.loads(json.dumps(b))]


def _resume(
    out: Path, net: LipSimNet, opt: torch.optim.Optimizer, cfg: RunConfig, total: int, task: Task
) -> tuple[int, float]:
    from safetensors.torch import load_file

    last = recover_checkpoint(out / "last")
    if last is None:
        raise RobustsimError(f"--resume: {out / 'last'} does not exist; start without --resume")
    saved, meta = load_net(last)
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    changed = _changed_settings(meta, cfg, task)
    if changed and not cfg.force:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise RobustsimError(
            f"--resume: {changed[0]} differs from the saved run{more}; use the run's settings, or pass --force to "
            "continue it under these"
        )
    if changed:
        print(visible(f"warning: --resume --force: continuing under {'; '.join(changed)}"), file=sys.stderr)
    if saved.config() != net.config():
        raise RobustsimError(f"--resume: {last} holds a different architecture; use the same --student/--init")
    net.load_state_dict(saved.state_dict())
    state_file = last / "state.safetensors"
    if not state_file.is_file():
        raise RobustsimError(f"--resume: {state_file} is missing; the run cannot continue exactly")
    step = training.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total:
        raise RobustsimError(f"--resume: {last}/config.json has global_step {step!r}, not a step in [0, {total}]")
    best = training.get("best")
    if best is not None and not isinstance(best, (int, float)):
        raise RobustsimError(f"--resume: {last}/config.json has a malformed best score {best!r}")
    try:
        tensors = load_file(str(state_file))
    except Exception as err:  # noqa: BLE001 - any failure to read is a corrupt file
        raise RobustsimError(
            f"--resume: {state_file} is corrupt or truncated ({err}); start without --resume"
        ) from None
    if "optimizer" not in training:
        raise RobustsimError(f"--resume: {last}/config.json lacks the optimizer state; start without --resume")
    unpack_state(opt, tensors, training["optimizer"])
    counted = {float(st["step"]) for st in opt.state.values() if "step" in st}
    if counted and counted != {float(step)}:
        raise RobustsimError(
            f"--resume: {last}/config.json says step {step} but its optimizer has taken {sorted(counted)[0]:.0f} "
            "steps (an edited checkpoint); start without --resume"
        )
    if torchrun_env()[0] == 0:
        _truncate_log(out / "log.jsonl", step)
    return step, (-math.inf if best is None else float(best))
