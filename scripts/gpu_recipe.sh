#!/usr/bin/env bash
# The GPU recipe: on one GPU, train the paper-width core on LSPET, then re-adapt faces, cats and shoes
# at 128 px to it, and evaluate everything; about 12 minutes of device time (each stage is also capped
# by --max-minutes). Every file and evaluation lands in OUT:
#
#   OUT/core/core.safetensors      + OUT/core/eval (held-out LSPET PCK@0.2)
#   OUT/faces/adapter.safetensors  + OUT/faces/eval (AFLW_M forward / backward / consistency)
#   OUT/cats/adapter.safetensors   + OUT/cats/eval, OUT/shoes/... (consistency on the held-out 500)
#   OUT/summary.txt                  the headline numbers, one line each
#
# usage: scripts/gpu_recipe.sh OUT [--dry-run]
#   --dry-run   the same commands on the tiny preset on the CPU, in a minute or two (a test runs it)
# environment: DATA (default ../shared/data: lspet/, mtfl/, cats/, shoes/ as in its README),
#   LANDMARKS (default: the `landmarks` command), CORE_STEPS, ADAPT_STEPS (override the schedule)
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
OUT=$1
DRY=0
[[ ${2:-} == --dry-run ]] && DRY=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$ROOT/../shared/data}
read -r -a LANDMARKS <<< "${LANDMARKS:-landmarks}"
mkdir -p "$OUT"

if [[ $DRY == 1 ]]; then
    DEVICE=cpu
    CORE=(--preset smoke --arch tiny --steps "${CORE_STEPS:-2}" --train-split :8 --val-split 8: --val-size 4)
    CORE_TEST=8:
    ADAPT=(--preset smoke --steps "${ADAPT_STEPS:-2}")
    HOLD=4
else
    DEVICE=cuda
    # paper width (6.2M parameters) at 128 px; batch 64 x 6,000 steps = 384k crops, what the cpu
    # core saw in 278 minutes; bf16 (auto on GPUs); 14 loader processes augment on the host
    CORE=(--preset paper --steps "${CORE_STEPS:-6000}" --batch-size 64 --lr 1e-3 --warmup-steps 300
          --foreground-weight 10 --train-split :8500 --val-split 8500:9000 --val-size 500 --val-every 1000
          --workers 14 --max-minutes 6)
    CORE_TEST=9000:
    # the cpu preset's objective (separation + equivariance, head from the core) at the core's 128 px
    ADAPT=(--preset cpu --image-size 128 --batch-size 32 --steps "${ADAPT_STEPS:-1500}" --workers 8
           --picture-every 500 --checkpoint-every 500 --max-minutes 1.5)
    HOLD=500
fi

step() {  # print, time and run one command
    echo "+ ${*}" >&2
    local start=$SECONDS
    "$@"
    echo "  ($((SECONDS - start)) s)" >&2
}

L=("${LANDMARKS[@]}")
step "${L[@]}" train-core "${CORE[@]}" --data "lspet:$DATA/lspet" --device "$DEVICE" --out "$OUT/core"
step "${L[@]}" evaluate-core "$OUT/core/core.safetensors" --dataset "lspet:$DATA/lspet" --split "$CORE_TEST" \
    --device "$DEVICE" --out "$OUT/core/eval" > "$OUT/core/eval.txt"

C=(--core "$OUT/core/core.safetensors" --device "$DEVICE")
M="$DATA/mtfl"
step "${L[@]}" adapt "mtfl:$M/new_training.txt" --category faces "${ADAPT[@]}" "${C[@]}" --out "$OUT/faces"
step "${L[@]}" evaluate --adapter "$OUT/faces/adapter.safetensors" "${C[@]}" --train "mtfl:$M/new_training.txt" \
    --test "mtfl:$M/new_testing.txt" --out "$OUT/faces/eval" > "$OUT/faces/eval.txt"

for category in cats shoes; do
    case $category in
        cats) LICENSE="Trained on AFHQ cats (CC BY-NC 4.0; Choi et al. 2020)" ;;
        shoes) LICENSE="Trained on UT-Zappos50K images (research use only; Yu & Grauman 2014)" ;;
    esac
    step "${L[@]}" adapt "folder:$DATA/$category" --train-split ":-$HOLD" --category "$category" \
        --license "$LICENSE" "${ADAPT[@]}" "${C[@]}" --out "$OUT/$category"
    step "${L[@]}" evaluate --adapter "$OUT/$category/adapter.safetensors" "${C[@]}" \
        --images "folder:$DATA/$category" --test-split="-$HOLD:" --out "$OUT/$category/eval" \
        > "$OUT/$category/eval.txt"
done

{
    echo "core: $(grep -h 'mean PCK@0.2' "$OUT/core/eval.txt") (LSPET $CORE_TEST)"
    echo "faces: $(grep -hE '^(forward|backward|consistency):' "$OUT/faces/eval.txt" | tr '\n' ' ')"
    for category in cats shoes; do
        echo "$category: $(grep -h '^consistency:' "$OUT/$category/eval.txt")"
    done
} | tee "$OUT/summary.txt"
