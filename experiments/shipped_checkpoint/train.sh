#!/usr/bin/env bash
# Recipe of the shipped certified metric `lipsim-nano` (robustsim/zoo/lipsim-nano/).
# One command from the repo root after `make venv`:  bash experiments/shipped_checkpoint/train.sh
# Deterministic on CPU (fixed seeds). About 25 minutes (the teacher cache takes 10) on 2 CPU cores.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/shipped}
rm -rf "$OUT"
# 1. distil the offline ViT + CNN teacher (DreamSim recipe) into a 1-Lipschitz nano student at 64 px
$BIN/robustsim train distill --teacher dinov2-s14+effnet-lite0 --student nano --input-size 64 \
  --images mini --epochs 12 --batch-size 64 --lr 0.01 --seed 0 --device cpu --out "$OUT/distill"
# 2. fine-tune on mini's 2AFC train split with the hinge loss; select by certified accuracy at 36/255
$BIN/robustsim train finetune --init "$OUT/distill/last" --data mini --margin 0.5 --epochs 1 \
  --batch-size 32 --lr 0.001 --select certified --select-eps 36/255 --seed 0 --device cpu --out "$OUT/finetune"
# 3. certify the selected checkpoint on mini's test split
$BIN/robustsim certify --metric "$OUT/finetune/best" --data mini --device cpu --json "$OUT/certify.json"
