#!/usr/bin/env bash
# Recipe of the shipped certified metric `lipsim-nano-aoc` (robustsim/zoo/lipsim-nano-aoc/): the nano student
# built from orthogonal AOC convolution blocks, distilled from the offline ViT + CNN teacher for 482 steps and
# fine-tuned 180 steps with the certified loss (hinge + radius term, weight 1), selected on mini:val by
# certified accuracy at 36/255: the aoc/certified
# configuration of experiments/layers_compared (its equal-budget step counts), whose checkpoint was shipped.
# One command from the repo root after `make venv`:  bash experiments/shipped_checkpoint/train_aoc.sh
# Deterministic on CPU for a fixed seed and thread count (ROBUSTSIM_THREADS); about 12 minutes on 2 CPU cores.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/shipped-aoc}
rm -rf "$OUT"
$BIN/robustsim train distill --teacher dinov2-s14+effnet-lite0 --student nano --layer aoc --input-size 64 \
  --images mini --epochs 1000 --max-steps 482 --batch-size 64 --lr 0.01 --warmup 0.05 --seed 0 --device cpu \
  --out "$OUT/distill"
$BIN/robustsim train finetune --init "$OUT/distill/last" --data mini --margin 0.5 --loss certified --target-eps 36/255 --radius-weight 1 --epochs 1000 \
  --max-steps 180 --batch-size 32 --lr 0.001 --warmup 0.05 --select certified --select-eps 36/255 --seed 0 \
  --device cpu --out "$OUT/finetune"
$BIN/robustsim certify --metric "$OUT/finetune/best" --data mini --device cpu --json "$OUT/certify.json"
