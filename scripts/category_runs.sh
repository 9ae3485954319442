#!/usr/bin/env bash
# Issue 18's cats and shoes runs, one after another (never two trainings at once on 2 cores). Each
# starts from the shipped adapter (--warm-start; the generator starts fresh), adapts on all but the
# last 1,000 images of the folder (sorted by path) and is scored every 250 steps on the 500 before
# the last 500 (consistency, and points on a near-white background); the last 500 stay the test
# split of `landmarks evaluate`. Usage, in the background:
#   setsid nohup scripts/category_runs.sh STEPS NAME... > runs/probes/categories.log 2>&1 &
# NAME: shoes-fg | shoes-cosine | cats-cosine | cats-128 | shoes-128 (re-adapted at 128 px, the core's
# own size, with lr 2e-3 as faces-128 in scripts/long_runs.sh; shoes keep the foreground term) |
# cats-128-more | shoes-128-more (cats-128 / shoes-128 continued from its checkpoint, generator
# included, with a fresh cosine) | cats-128-final | shoes-128-final (the -more runs continued the
# same way, to 5,000 steps in all: cats 1750, shoes 1250);
# results in runs/probes/NAME/history.jsonl. The
# shipped shoes adapter is `shoes-fg` at 500 steps; this script did not pass --license then, so its
# licence line was set afterwards (metadata only, the run's tensors, the same fingerprint).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DATA:-../shared/data}
steps=$1; shift
source scripts/adapt_queue.sh
for name in "$@"; do
  cat=${name%%-*}
  case $cat in
    shoes) license="Trained on UT-Zappos50K images (research use only; Yu & Grauman 2014)" ;;
    cats)  license="Trained on AFHQ cats (CC BY-NC 4.0; Choi et al. 2020)" ;;
  esac
  start=adapters/$cat.safetensors
  [[ $name == *-more && -f runs/probes/${name%-more}/checkpoint.pt ]] && start=runs/probes/${name%-more}/checkpoint.pt
  [[ $name == *-final && -f runs/probes/${name%-final}-more/checkpoint.pt ]] && start=runs/probes/${name%-final}-more/checkpoint.pt
  common=(folder:$D/$cat --preset cpu --category "$cat" --warm-start "$start"
          --train-split=:-1000 --val "folder:$D/$cat" --val-split=-1000:-500 --steps "$steps"
          --picture-every 250 --checkpoint-every 250 --lr-schedule cosine --license "$license")
  case $name in
    shoes-fg)     extra=(--foreground-weight 1.0) ;;
    shoes-cosine) extra=() ;;
    cats-cosine)  extra=() ;;
    cats-128)     extra=(--image-size 128 --lr 2e-3) ;;
    shoes-128)    extra=(--image-size 128 --lr 2e-3 --foreground-weight 1.0) ;;
    cats-128-more) extra=(--image-size 128 --lr 2e-3) ;;
    shoes-128-more) extra=(--image-size 128 --lr 2e-3 --foreground-weight 1.0) ;;
    cats-128-final) extra=(--image-size 128 --lr 2e-3) ;;
    shoes-128-final) extra=(--image-size 128 --lr 2e-3 --foreground-weight 1.0) ;;
    *) echo "unknown run $name"; exit 2 ;;
  esac
  queue_run "$name" "${common[@]}" "${extra[@]}"
done
