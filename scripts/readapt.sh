#!/usr/bin/env bash
# Re-adapts the shipped categories to another core, in the stages of the shipped files' lineage, and
# sets each new adapter beside the shipped one on the validation rows (never the test rows).
#
#   CORE=runs/core-w192/core.safetensors NAME=w192 scripts/readapt.sh faces cats shoes
#   NAME=w192 scripts/readapt.sh compare          # only the validation table, from what has finished
#   scripts/readapt.sh --dry-run faces            # print the commands, run nothing
#
# An adapter's shapes follow its core, so a new core needs fresh adapters. Each category trains in
# stages into runs/readapt/NAME/CATEGORY-N, each warm-started from the previous one: from its
# checkpoint (adapter and generator) at the same size, from its adapter alone (a fresh generator)
# when the size changes, as the shipped faces did. Every stage runs with --resume: run the script again after a stop and
# it continues where the checkpoints are; a stage whose adapter.safetensors exists is skipped. The
# stages (the shipped files' `training_steps_in_all`, each 64 px run as one cosine):
#
#   faces  5,500 steps at 64 px, then 4,000 at 128 px, then 3,500 at 128 px (a warm restart)
#   cats   1,750 at 64 px, then 500 at 128, then 1,000 at 128
#   shoes  1,750 at 64 px, 500 at 64 with the foreground term, then 500 and 1,000 at 128 with it
#
# 64 px stages use `--preset quick --lr-schedule cosine`, 128 px ones `--preset cpu` (lr 2e-3 cosine).
# The last stage is calibrated for int8 as `scripts/reproduce_results.sh calibrate` calibrates the
# shipped files. Each category's rows and licence are in scripts/categories.sh, which both scripts read.
#
# compare (after the categories named, or alone) scores the last finished stage of each category and
# the shipped adapter on the same validation rows (faces: MTFL rows 6655: with the regressor on
# :6655; cats and shoes: rows -1000:-500) into runs/readapt/NAME/CATEGORY-val.json and
# runs/readapt/shipped/CATEGORY-val.json, and prints them side by side. The issue's rule: ship a new
# adapter only where it wins on validation (cats and shoes: consistency not worse, spread not smaller).
#
# CORE (default runs/core-w192/core.safetensors), NAME (default w192), DATA (default ../shared/data)
# and LANDMARKS (default .venv/bin/landmarks) override the defaults. Hours of CPU: run it in the
# background and record it for scripts/paused.sh:
#   setsid nohup scripts/readapt.sh faces cats shoes compare > runs/readapt.out 2>&1 & echo $! > runs/training.pid
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/categories.sh
core=${CORE:-runs/core-w192/core.safetensors}
name=${NAME:-w192}
root=runs/readapt/$name
todo=()
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    -h|--help) usage; exit 0 ;;
    faces|cats|shoes|compare) todo+=("$arg") ;;
    *) echo "unknown category or step: $arg (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#todo[@]} -gt 0 ]] || { echo "name faces, cats, shoes and/or compare (see --help)" >&2; exit 2; }

# "SIZE STEPS [extra flags]" per stage
stages() {
  case $1 in
    faces) printf '%s\n' "64 5500" "128 4000" "128 3500" ;;
    cats) printf '%s\n' "64 1750" "128 500" "128 1000" ;;
    shoes) printf '%s\n' "64 1750" "64 500 --foreground-weight 1.0" "128 500 --foreground-weight 1.0" \
                         "128 1000 --foreground-weight 1.0" ;;
  esac
}

last_stage() {  # the folder of a category's last finished stage, or nothing
  local found="" out
  for out in "$root/$1"-*; do [[ -f $out/adapter.safetensors ]] && found=$out; done
  echo "$found"
}

adapt_category() {
  local category=$1 n=0 previous="" previous_size="" size steps extra out start
  while read -r size steps extra; do
    n=$((n + 1))
    out=$root/$category-$n
    # from a stage of the same size its checkpoint (generator included); from 64 px to 128 px its
    # adapter only, a fresh generator, as the shipped faces moved from 64 to 128 px
    start=""
    [[ -n $previous ]] && start=$previous/checkpoint.pt
    [[ -n $previous && $previous_size != "$size" ]] && start=$previous/adapter.safetensors
    previous_size=$size
    if [[ -f $out/adapter.safetensors ]]; then previous=$out; continue; fi
    local recipe=(--preset cpu)
    [[ $size == 64 ]] && recipe=(--preset quick --lr-schedule cosine)
    # shellcheck disable=SC2046,SC2086  # the data options and extra flags are words
    run "$landmarks" adapt $(training_data "$category") "${recipe[@]}" --image-size "$size" --steps "$steps" $extra \
      --core "$core" --category "$category" --license "$(licence "$category")" ${start:+--warm-start "$start"} \
      --checkpoint-every 250 --picture-every 500 --no-calibrate --resume --out "$out"
    previous=$out
  done < <(stages "$category")
  # shellcheck disable=SC2046
  run "$landmarks" calibrate "$previous/adapter.safetensors" --core "$core" $(calibration_data "$category")
}

validate() {  # CATEGORY ADAPTER CORE OUT.json
  # shellcheck disable=SC2046
  run "$landmarks" evaluate --adapter "$2" --core "$3" $(validation_data "$1") --out "${4%.json}"
  [[ $dry == 1 ]] || cp "${4%.json}/evaluation.json" "$4"
}

compare() {
  mkdir -p "$root" runs/readapt/shipped
  local category last
  for category in faces cats shoes; do
    last=$(last_stage "$category")
    [[ -n $last ]] || { echo "$category: no finished stage in $root yet"; continue; }
    [[ -f runs/readapt/shipped/$category-val.json ]] || validate "$category" "adapters/$category.safetensors" \
      adapters/core.safetensors "runs/readapt/shipped/$category-val.json"
    validate "$category" "$last/adapter.safetensors" "$core" "$root/$category-val.json"
  done
  [[ $dry == 1 ]] && return
  "$python" - "$root" <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
keys = ("forward", "backward", "consistency", "spread", "background_points_per_image")
print(f"{'validation rows':<22}" + "".join(f"{k.split('_')[0]:>13}" for k in keys))
for category in ("faces", "cats", "shoes"):
    for who, path in (("shipped", Path("runs/readapt/shipped") / f"{category}-val.json"),
                      (root.name, root / f"{category}-val.json")):
        if path.exists():
            d = json.loads(path.read_text())
            print(f"{category + ' ' + who:<22}" + "".join(f"{d[k]:>13.2f}" if k in d else f"{'-':>13}" for k in keys))
PY
}

mkdir -p "$root"
for step in "${todo[@]}"; do
  case $step in
    compare) compare ;;
    *) adapt_category "$step" ;;
  esac
done
