"""``robustsim train distill|finetune``: the two LipSim training stages (also under ``torchrun``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from robustsim.cli.options import (
    COUNT,
    SEED,
    FiniteFloat,
    UserPath,
    device_option,
    metric_option,
    parse_floats,
    registry_choice,
    say,
)
from robustsim.limits import MAX_BATCH, MAX_COUNT, MAX_INPUT, MAX_WORKERS


def _run_options(epochs: int, batch_size: int, lr: float) -> Callable:
    """Options every training command shares (defaults differ per stage)."""
    every = click.IntRange(0, MAX_COUNT)
    shared: list[tuple[str, dict[str, Any]]] = [
        ("--out", {"required": True, "default": None, "show_default": False, "type": UserPath(output=True),
                   "help": "Run folder (last/, best/, log.jsonl)."}),
        ("--epochs", {"default": epochs, "type": COUNT,
                      "help": "Passes over the training data (--max-steps stops earlier)."}),
        ("--batch-size", {"default": batch_size, "type": click.IntRange(1, MAX_BATCH),
                          "help": "Global batch (all processes)."}),
        ("--lr", {"default": lr, "type": FiniteFloat(0, 10, min_open=True),
                  "help": "Peak learning rate (Adam; linear warm-up, then cosine decay to 0)."}),
        ("--warmup", {"default": 0.05, "type": FiniteFloat(0, 1), "help": "Warm-up fraction of all steps."}),
        ("--seed", {"default": 0, "type": SEED,
                    "help": "Seeds the initialisation, data order and augmentation (a rerun repeats the run)."}),
        ("--workers", {"default": 0, "type": click.IntRange(0, MAX_WORKERS), "help": "DataLoader worker processes."}),
        ("--save-every", {"default": 0, "type": every, "help": "Also save last/ every N steps (0: each epoch)."}),
        ("--max-steps", {"type": COUNT, "default": None, "show_default": False, "help":
                         "Stop after N optimiser steps (validated and saved there); try training in a minute."}),
        ("--resume", {"is_flag": True, "default": False, "show_default": False,
                      "help": "Continue the run in --out exactly where its last/ checkpoint stopped (every setting "
                              "that decides the result must be the run's)."}),
        ("--force", {"is_flag": True, "default": False, "show_default": False,
                     "help": "With --resume: continue although settings differ from the saved run's (named in a "
                             "warning)."}),
        ("--eval-data", {"default": "mini:val",
                         "help": "2AFC spec for the final summary (and distill's per-epoch checks); '': none."}),
    ]  # fmt: skip

    def wrap(f: Callable) -> Callable:
        f = device_option(f)
        for name, kw in reversed(shared):
            f = click.option(name, **{"show_default": "default" in kw, **kw})(f)
        return f

    return wrap


def _run_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    keys = ("epochs", "batch_size", "lr", "warmup", "seed", "workers", "save_every", "resume", "force", "max_steps")
    run = {k: kw.pop(k) for k in keys}
    run["device"] = str(kw.pop("device"))
    return run


def _report(result: dict[str, Any]) -> None:
    from robustsim.train.recipes import summary_line

    if "summary" in result:
        say(summary_line(result["summary"]))


@click.group("train")
def train_group() -> None:
    """Train certified (1-Lipschitz) metrics: `distill` from a teacher, then `finetune` on 2AFC.

    Both run unchanged under `torchrun --nproc_per_node N -m robustsim train ...` (DDP: gloo on CPU,
    nccl on CUDA); the global --batch-size is split over the processes.
    """


@train_group.command("distill")
@metric_option(
    "--teacher",
    default="dinov2-s14+effnet-lite0",
    show_default=True,
    help="Embedding metric or a+b ensemble (DreamSim recipe), e.g. effnet-ensemble.",
)
@click.option(
    "--student", default="tiny", show_default=True, help="LipSimNet preset: nano, tiny, small, medium, large, xlarge."
)
@click.option("--images", default="mini", show_default=True, help="Image folder or 2AFC spec (mini = mini:train).")
@click.option(
    "--val-images", default="auto", show_default=True, help="Held-out images for the RMSE check ('' for none)."
)
@click.option(
    "--input-size",
    default=64,
    show_default=True,
    type=click.IntRange(16, MAX_INPUT),
    help="Student input size (multiple of 16).",
)
@click.option(
    "--limit",
    type=COUNT,
    default=None,
    help="Train on the first N images and check on at most N held-out ones (a trial run).",
)
@click.option(
    "--layer",
    type=registry_choice("robustsim.nn", "LAYERS"),
    default="sll",
    show_default=True,
    help="1-Lipschitz layer kind of the student (SLL, AOL, CPL, orthogonal AOC).",
)
@_run_options(epochs=20, batch_size=64, lr=0.01)
def distill_cmd(**kw: Any) -> None:
    """Distil a teacher's embeddings into a 1-Lipschitz LipSimNet student (RMSE, two augmented views)."""
    from robustsim.train.recipes import distill

    run = _run_kwargs(kw)
    kw["val_images"] = kw["val_images"] or None
    _report(distill(**kw, **run))


@train_group.command("finetune")
@click.option(
    "--init",
    required=True,
    default=None,
    type=UserPath(existing="folder"),
    help="Checkpoint to start from.",
)
@click.option("--data", default="mini", show_default=True, help="2AFC training spec (mini = mini:train).")
@click.option("--val", default="auto", show_default=True, help="Validation spec for model selection.")
@click.option("--margin", default=0.5, show_default=True, type=FiniteFloat(0), help="Hinge margin.")
@click.option(
    "--select",
    type=registry_choice("robustsim.train.finetune", "SELECTIONS"),
    default="certified",
    show_default=True,
    help="What picks best/: certified accuracy at --select-eps, or clean 2AFC accuracy on --val.",
)
@click.option("--select-eps", default="36/255", show_default=True, help="l2 epsilon for --select certified.")
@click.option(
    "--loss",
    type=registry_choice("robustsim.train.finetune", "LOSSES"),
    default="hinge",
    show_default=True,
    help="hinge (LipSim's) or certified: the hinge plus a hinge on the sound radius at --target-eps.",
)
@click.option("--target-eps", default="36/255", show_default=True, help="l2 radius the certified loss aims for.")
@click.option(
    "--radius-weight", default=1.0, show_default=True, type=FiniteFloat(0), help="Weight of the radius term."
)
@click.option(
    "--limit",
    type=COUNT,
    default=None,
    help="Train on the first N triplets and select on at most N validation ones (a trial run).",
)
@_run_options(epochs=1, batch_size=32, lr=1e-3)
def finetune_cmd(**kw: Any) -> None:
    """Fine-tune a checkpoint on 2AFC triplets; keeps last/ and the selected best/.

    Fine-tune a checkpoint on 2AFC triplets (hinge, or certified: the hinge plus a hinge on the certified
    radius); keeps last/ and the selected best/."""
    from robustsim.train.recipes import finetune

    run = _run_kwargs(kw)
    kw["select_eps"] = parse_floats(kw["select_eps"], "--select-eps")[0]
    kw["target_eps"] = parse_floats(kw["target_eps"], "--target-eps")[0]
    if kw["target_eps"] <= 0:
        raise click.BadParameter("must be > 0", param_hint="--target-eps")
    _report(finetune(**kw, **run))
