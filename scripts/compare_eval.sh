#!/usr/bin/env bash
# Scores face runs under runs/probes/NAME (`landmarks adapt` / `--mode finetune|scratch` outputs)
# on validation (MTFL training rows 6655:, regressor fitted on rows :6655) and on the AFLW_M test list
# (the paper's protocol; the regressor fitted on all usable MTFL training rows), each with the run's
# last export (equal steps). JSON in docs/compare/NAME-{val,test}.json; one line per run and split.
#   scripts/compare_eval.sh proposed finetune scratch
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MTFL:-../shared/data/mtfl}
mkdir -p docs/compare
for name in "$@"; do
  run=runs/probes/$name
  if [[ -f $run/network.safetensors ]]; then what=(--network "$run/network.safetensors")
  else what=(--adapter "$run/adapter.safetensors"); fi
  for split in val test; do
    if [[ $split == val ]]; then
      data=(--train "mtfl:$M/new_training.txt" --train-split :6655 --test "mtfl:$M/new_training.txt" --test-split 6655:)
    else
      data=(--train "mtfl:$M/new_training.txt" --test "mtfl:$M/new_testing.txt")
    fi
    .venv/bin/landmarks evaluate "${what[@]}" "${data[@]}" --out "$run/eval-$split" > "$run/eval-$split.log" 2>&1
    cp "$run/eval-$split/evaluation.json" "docs/compare/$name-$split.json"
    .venv/bin/python - "$name" "$split" "docs/compare/$name-$split.json" <<'PY'
import json, sys
name, split, path = sys.argv[1:]
d = json.load(open(path))
print(f"{name:9s} {split:4s} forward {d['forward']:6.2f}  backward {d['backward']:6.2f}  "
      f"consistency {d['consistency']:5.2f} px  ({d['train_images']} regressor / {d['test_images']} test images)")
PY
  done
done
