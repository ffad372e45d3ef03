#!/usr/bin/env bash
# Recipe of the shipped certified metric `lipsim-nano-cert` (robustsim/zoo/lipsim-nano-cert/): the shipped
# lipsim-nano, fine-tuned one epoch with the certified loss (a hinge on the certifier's own sound radius at
# 36/255, weight 3, plus the margin-0.5 hinge), selected on mini:val by certified accuracy at 36/255.
# One command from the repo root after `make venv`:  bash experiments/shipped_checkpoint/train_cert.sh
# Deterministic on CPU (fixed seed). About 2 minutes on 2 CPU cores; experiments/layers_compared shows why
# this configuration (its "candidates" table).
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/shipped-cert}
rm -rf "$OUT"
$BIN/robustsim train finetune --init robustsim/zoo/lipsim-nano --data mini --margin 0.5 --loss certified \
  --target-eps 36/255 --radius-weight 3 --epochs 1 --batch-size 32 --lr 0.001 --select certified \
  --select-eps 36/255 --seed 0 --device cpu --out "$OUT/finetune"
$BIN/robustsim certify --metric "$OUT/finetune/best" --data mini --device cpu --json "$OUT/certify.json"
