#!/usr/bin/env bash
# The shipped adapters scored as the server answers them (`landmarks evaluate --precision`: ONNX
# Runtime, crops rounded to 8-bit pixels), in fp32 and in int8 (what the default server runs for a
# calibrated adapter on a CPU with VNNI/AMX), with RESULTS.md's protocols: faces forward/backward on
# AFLW_M (regressor on all usable MTFL training rows), cats and shoes consistency on their last 500
# images. A report of the test splits (nothing is chosen on it). JSON in docs/compare/served-*.json.
#   scripts/served_eval.sh               # faces cats shoes
#   scripts/served_eval.sh faces
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DATA:-../shared/data}
mkdir -p docs/compare runs/served
for cat in ${@:-faces cats shoes}; do
  case $cat in
    faces) data=(--train "mtfl:$D/mtfl/new_training.txt" --test "mtfl:$D/mtfl/new_testing.txt") ;;
    cats|shoes) data=(--images "folder:$D/$cat" --test-split=-500:) ;;
    *) echo "unknown category $cat"; exit 2 ;;
  esac
  for precision in fp32 int8; do
    out=runs/served/$cat-$precision
    .venv/bin/landmarks evaluate --adapter "adapters/$cat.safetensors" "${data[@]}" --precision "$precision" \
      --out "$out" > "$out.log" 2>&1
    cp "$out/evaluation.json" "docs/compare/served-$cat-$precision.json"
    .venv/bin/python - "$cat" "$precision" "docs/compare/served-$cat-$precision.json" <<'PY'
import json, sys
cat, precision, path = sys.argv[1:]
d = json.load(open(path))
fb = f"forward {d['forward']:6.2f}  backward {d['backward']:6.2f}  " if "forward" in d else ""
bg = f"  background {d['background_points_per_image']:.2f}" if "background_points_per_image" in d else ""
print(f"{cat:6s} {precision}: {fb}consistency {d['consistency']:5.2f} px  spread {d['spread']:.1f}{bg}")
PY
  done
done
