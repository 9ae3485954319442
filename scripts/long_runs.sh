#!/usr/bin/env bash
# Issue 18's long runs and the paper's comparison, one after another (never two trainings at once on
# 2 cores). Usage, in the background:
#   setsid nohup scripts/long_runs.sh NAME... > runs/probes/long.log 2>&1 &
# NAME:
#   faces-10k      the shipped face adapter's run continued to 10,000 steps in all: 4,500 more steps
#                  from runs/faces-long/checkpoint.pt (its adapter and generator; the shipped file,
#                  generator fresh, when that checkpoint is gone), cosine from 1 to 0.01 over the 4,500
#                  (a warm restart of the schedule), scored every 500 steps on MTFL rows 6655:.
#   faces-128      the shipped face adapter re-adapted at 128 px, the core's own size and the paper's
#                  (at 64 px the eyes are ~19 px apart: one pixel is ~5% of the inter-ocular distance;
#                  the hourglass needs a multiple of 64): warm-started from adapters/faces.safetensors
#                  (generator fresh), 4,000 steps (~1.5 s each here: what one session affords), adapter
#                  lr 2e-3 (session 9's probe: 3e-3 learned faster than 1e-3), cosine 1 -> 0.01 over them.
#   faces-128-more faces-128 continued with a warm restart of its schedule: from that run's checkpoint
#                  (adapter and generator; the shipped file, generator fresh, when it is gone), 3,500
#                  more steps at lr 2e-3, cosine 1 -> 0.01 over them (its backward error had flattened
#                  as the rate decayed).
#   faces-128-teach the shipped face adapter (generator fresh) at 128 px with the generator that carries
#                  appearance (resize-convolutions, skips from y', each loss term normalised by its running
#                  mean: RESULTS.md's `teach-norm`, whose reconstructions carried each target's colours),
#                  3,000 steps at lr 2e-3, cosine 1 -> 0.01 over them; compare its validation curve with
#                  faces-128's (the same rows; that run also started with a fresh generator).
#   proposed | finetune | scratch
#                  the paper's comparison on the shipped core: fresh runs of the cpu preset, 1,500 steps
#                  each, the same images (MTFL rows :6655), seed and validation (rows 6655:).
# Results in runs/probes/NAME/ (history.jsonl, curve.png, best-adapter.safetensors); each run resumes
# from its checkpoint when the queue is started again. `scripts/paused.sh CMD` runs CMD with it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MTFL:-../shared/data/mtfl}
source scripts/adapt_queue.sh
faces=(mtfl:$M/new_training.txt --preset cpu --category faces --train-split :6655
       --val mtfl:$M/new_training.txt --val-split 6655: --val-fit-split :6655 --checkpoint-every 500)
for name in "$@"; do
  case $name in
    faces-10k)
      start=runs/faces-long/checkpoint.pt
      [[ -f $start ]] || start=adapters/faces.safetensors
      queue_run "$name" "${faces[@]}" --warm-start "$start" --lr-schedule cosine --steps 4500 --picture-every 500 ;;
    faces-128)
      queue_run "$name" "${faces[@]}" --image-size 128 --warm-start adapters/faces.safetensors --lr 2e-3 \
        --lr-schedule cosine --steps 4000 --picture-every 500 ;;
    faces-128-more)
      start=runs/probes/faces-128/checkpoint.pt
      [[ -f $start ]] || start=adapters/faces.safetensors
      queue_run "$name" "${faces[@]}" --image-size 128 --warm-start "$start" --lr 2e-3 \
        --lr-schedule cosine --steps 3500 --picture-every 500 ;;
    faces-128-teach)
      queue_run "$name" "${faces[@]}" --image-size 128 --warm-start adapters/faces.safetensors --lr 2e-3 \
        --lr-schedule cosine --steps 3000 --picture-every 500 --generator-upsample resize --generator-skips true \
        --perceptual-normalise true ;;
    proposed|finetune|scratch)
      queue_run "$name" "${faces[@]}" --mode "$name" --steps 1500 --picture-every 250 --seed 0 ;;
    *) echo "unknown run $name"; exit 2 ;;
  esac
done
