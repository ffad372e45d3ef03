"""Checkpoints that ship inside the package: one folder per metric (config.json, model.safetensors, card.json)."""
