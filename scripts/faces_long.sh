#!/usr/bin/env bash
# Issue 18's long face run: the recipe of the one probe that beat the shipped adapter on validation
# (`control`: the cpu preset; scripts/faces_probes.sh, RESULTS.md), continued from that probe's
# checkpoint (its adapter *and* its trained generator), with a cosine schedule over the whole planned
# length (STEPS, default 6500: the shipped adapter's 2,500 steps + the probe's 1,000 + these =
# 10,000 in all). Scored every 500 steps on MTFL training rows 6655:
# (regressor fitted on 2,000 rows spread over :6655); best-adapter.safetensors keeps the export at the
# best validation forward error. Resumable: run it again and it continues from its checkpoint.
#   setsid nohup scripts/faces_long.sh [STEPS] > runs/faces-long.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MTFL:-../shared/data/mtfl}
steps=${1:-6500}
out=runs/faces-long
echo $$ > runs/training.pid  # the process group scripts/paused.sh stops
start=(--warm-start runs/probes/control/checkpoint.pt)
[[ -f $out/checkpoint.pt ]] && start=(--resume)
.venv/bin/landmarks adapt mtfl:$M/new_training.txt --preset cpu --category faces \
  --train-split :6655 --val mtfl:$M/new_training.txt --val-split 6655: --val-fit-split :6655 \
  --lr-schedule cosine \
  --steps "$steps" --picture-every 500 --checkpoint-every 500 --out "$out" "${start[@]}"
rm -f runs/training.pid
