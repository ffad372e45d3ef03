"""Training certified metrics: distillation from a teacher, 2AFC fine-tuning, resumable checkpoints, DDP."""

from robustsim.train.distill import DistillTask, rmse
from robustsim.train.finetune import FinetuneTask, hinge_2afc
from robustsim.train.loop import RunConfig, fit, lr_at
from robustsim.train.recipes import distill, finetune
from robustsim.train.teacher import load_teacher, teacher_targets

__all__ = [
    "DistillTask",
    "FinetuneTask",
    "RunConfig",
    "distill",
    "finetune",
    "fit",
    "hinge_2afc",
    "load_teacher",
    "lr_at",
    "rmse",
    "teacher_targets",
]
