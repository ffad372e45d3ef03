"""Models: LipSimNet (1-Lipschitz embedding network) with size presets, and checkpoints."""

from robustsim.models.checkpoint import load_checkpoint_metric, load_net, save_checkpoint
from robustsim.models.lipsim import PRESETS, LipSimMetric, LipSimNet, LipSimPreset

__all__ = [
    "PRESETS",
    "LipSimMetric",
    "LipSimNet",
    "LipSimPreset",
    "load_checkpoint_metric",
    "load_net",
    "save_checkpoint",
]
