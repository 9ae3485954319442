#!/usr/bin/env bash
# Issue 18's recipe probes on faces, one after another (never two trainings at once on 2 cores).
# Each starts from the shipped face adapter (--warm-start; the generator starts fresh), adapts on
# MTFL training rows :6655 and is scored every 250 steps on rows 6655: (the regressor fitted on
# 2,000 rows spread over :6655, LFW and web faces alike); nothing reads the AFLW_M test list. Usage, in the background:
#   setsid nohup scripts/faces_probes.sh STEPS NAME... > runs/probes/queue.log 2>&1 &
# NAME: control | cosine | teach | teach-norm | conc ; results in runs/probes/NAME/history.jsonl.
# While the queue runs, `scripts/paused.sh CMD` runs CMD with it stopped (SIGSTOP/SIGCONT).
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MTFL:-../shared/data/mtfl}
steps=$1; shift
source scripts/adapt_queue.sh
common=(mtfl:$M/new_training.txt --preset cpu --category faces --warm-start adapters/faces.safetensors
        --train-split :6655 --val mtfl:$M/new_training.txt --val-split 6655: --val-fit-split :6655
        --steps "$steps" --picture-every 250 --checkpoint-every 250)
for name in "$@"; do
  case $name in
    control)    extra=() ;;
    cosine)     extra=(--lr-schedule cosine) ;;
    teach)      extra=(--lr-schedule cosine --generator-upsample resize --generator-skips true) ;;
    teach-norm) extra=(--lr-schedule cosine --generator-upsample resize --generator-skips true
                       --perceptual-normalise true) ;;
    conc)       extra=(--lr-schedule cosine --concentration-weight 0.1) ;;
    *) echo "unknown probe $name"; exit 2 ;;
  esac
  queue_run "$name" "${common[@]}" "${extra[@]}"
done
