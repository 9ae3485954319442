#!/usr/bin/env bash
# Regenerates the evaluation files behind RESULTS.md and the README from the shipped files
# (adapters/) and the data in ../shared/data, then checks that the pages still quote them.
#
#   scripts/reproduce_results.sh                   # core faces served: every file of the shipped core and adapters
#   scripts/reproduce_results.sh served            # some steps only
#   scripts/reproduce_results.sh --dry-run         # print the commands, run nothing
#
# Steps (in this order when several are named):
#   core       docs/core_eval.json, docs/core_eval_flip.json: the core's PCK@0.2 on LSPET images 9000:
#              (held out), without and with the flip test; docs/core_eval_val.json on its validation
#              rows 8500:9000; docs/core_eval_train.json on rows 8000:8500, which it trained on
#   faces      docs/faces_eval.json: the faces adapter in PyTorch fp32, AFLW_M forward / backward
#              (regressor on all usable MTFL training rows), consistency, errors by regressor size
#   served     docs/compare/served-{faces,cats,shoes}-{fp32,int8}.json: the shipped adapters as the
#              server answers them (ONNX Runtime, 8-bit pixels), faces on AFLW_M, cats and shoes
#              consistency and background points on the last 500 images of their folders
#   calibrate  (only when named) the shipped adapters' int8 calibrations, checked against fp32 on each
#              category's validation rows; rewrites adapters/*.safetensors' metadata in place (same
#              tensors and fingerprints); the checks in runs/calibrate/CATEGORY.txt
#   compare    (only when named) proposed / finetune / scratch on one core: trains each missing
#              runs/probes/[NAME/]{proposed,finetune,scratch} (1,500 steps, hours on 2 cores), then
#              docs/compare/[NAME/]MODE-{val,test}.json (MTFL rows 6655: with the regressor on :6655, and
#              AFLW_M). CORE (default adapters/core.safetensors) and PRESET (default quick: the 64 px
#              recipe of RESULTS.md's table on the shipped core) choose the runs; NAME (default none: that
#              table's files) keeps another comparison apart, e.g.
#              CORE=runs/core-w192/core.safetensors PRESET=cpu NAME=w192-128px scripts/reproduce_results.sh compare
# The numbers in the shipped files' own metadata (the core's validation PCK, the int8 calibrations'
# checks) are written by training and by `calibrate`. Not regenerated:
# docs/compare/faces-128-teach-500-*.json, a run described at commit 55ef728 (RESULTS.md, "Tried,
# and did not pay").
# Then `pytest tests/test_docs.py -k quoted` lists every number the pages quote that the new files
# no longer say. Hours of CPU in all; nothing is chosen on the test splits.
#
# Each category's rows and licence are in scripts/categories.sh. DATA (default ../shared/data),
# LANDMARKS (default .venv/bin/landmarks) and PYTHON (default .venv/bin/python) override the paths.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/categories.sh
steps=()
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    -h|--help) usage; exit 0 ;;
    core|faces|served|calibrate|compare) steps+=("$arg") ;;
    *) echo "unknown step or option: $arg (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#steps[@]} -gt 0 ]] || steps=(core faces served)

has() { [[ " ${steps[*]} " == *" $1 "* ]]; }
mkdir -p runs/reproduce docs/compare

if has calibrate; then
  mkdir -p runs/calibrate
  for c in faces cats shoes; do
    # shellcheck disable=SC2046  # the data options are words
    if [[ $dry == 1 ]]; then run "$landmarks" calibrate "adapters/$c.safetensors" $(calibration_data "$c") --threads 1
    else run "$landmarks" calibrate "adapters/$c.safetensors" $(calibration_data "$c") --threads 1 | tee "runs/calibrate/$c.txt"; fi
  done
fi

if has core; then
  # held out (without and with the flip test), validation, training rows: RUN-DIR DOCS-FILE ROWS [--flip]
  while read -r -u 3 out file rows flip; do  # (fd 3: the commands keep stdin)
    # shellcheck disable=SC2086  # no flip is no word
    run "$landmarks" evaluate-core adapters/core.safetensors --dataset "lspet:$D/lspet" --split "$rows" $flip \
      --out "runs/reproduce/$out"
    keep "runs/reproduce/$out/core_eval.json" "docs/$file"
    summary "docs/$file"
  done 3<<'ROWS'
core core_eval.json 9000:
core-flip core_eval_flip.json 9000: --flip
core-val core_eval_val.json 8500:9000
core-train core_eval_train.json 8000:8500
ROWS
fi

if has faces; then
  # shellcheck disable=SC2046  # the data options are words
  run "$landmarks" evaluate --adapter adapters/faces.safetensors $(test_data faces) --out runs/reproduce/faces
  keep runs/reproduce/faces/evaluation.json docs/faces_eval.json
  summary docs/faces_eval.json
fi

if has served; then
  for c in faces cats shoes; do
    for precision in fp32 int8; do
      # shellcheck disable=SC2046
      run "$landmarks" evaluate --adapter "adapters/$c.safetensors" $(test_data "$c") --precision "$precision" \
        --out "runs/reproduce/served-$c-$precision"
      keep "runs/reproduce/served-$c-$precision/evaluation.json" "docs/compare/served-$c-$precision.json"
      summary "docs/compare/served-$c-$precision.json"
    done
  done
fi

if has compare; then
  core=${CORE:-adapters/core.safetensors}
  name=${NAME:+$NAME/}
  [[ $dry == 1 ]] || mkdir -p "docs/compare/$name"
  for mode in proposed finetune scratch; do
    out=runs/probes/$name$mode
    if [[ ! -f $out/adapter.safetensors && ! -f $out/network.safetensors ]]; then
      # shellcheck disable=SC2046
      run "$landmarks" adapt $(training_data faces) --preset "${PRESET:-quick}" --core "$core" --category faces \
        --checkpoint-every 500 --mode "$mode" --steps 1500 --picture-every 250 --seed 0 --no-calibrate --out "$out"
    fi
    # a finetuned or scratch run exports a whole network, the proposed one an adapter (folded with its core)
    if [[ -f $out/network.safetensors || $mode != proposed ]]; then what=(--network "$out/network.safetensors")
    else what=(--adapter "$out/adapter.safetensors" --core "$core"); fi
    # shellcheck disable=SC2046
    run "$landmarks" evaluate "${what[@]}" $(validation_data faces) --out "$out/eval-val"
    keep "$out/eval-val/evaluation.json" "docs/compare/$name$mode-val.json"
    # shellcheck disable=SC2046
    run "$landmarks" evaluate "${what[@]}" $(test_data faces) --out "$out/eval-test"
    keep "$out/eval-test/evaluation.json" "docs/compare/$name$mode-test.json"
    summary "docs/compare/$name$mode-val.json"
    summary "docs/compare/$name$mode-test.json"
  done
fi

# every number the README, RESULTS.md and the performance page quote, against the files
run "$python" -m pytest -q tests/test_docs.py -k quoted
