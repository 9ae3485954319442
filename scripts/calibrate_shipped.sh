#!/usr/bin/env bash
# The shipped adapters' int8 calibrations (`landmarks calibrate`, for `landmarks serve --precision
# int8`): ranges from each category's adaptation images, checked against fp32 on its validation rows
# (the rows its training held out and validated on; never the test rows). Rewrites adapters/*.safetensors
# in place: metadata only, the same tensors and fingerprints. Output in runs/calibrate/CATEGORY.txt.
#
#   scripts/calibrate_shipped.sh                # faces, cats, shoes
#   scripts/calibrate_shipped.sh faces
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DATA:-../shared/data}
mkdir -p runs/calibrate
for cat in "${@:-faces cats shoes}"; do
  for c in $cat; do
    case $c in
      faces) images=(--images "mtfl:$D/mtfl/new_training.txt" --split :6655 --held-out 6655:) ;;
      cats|shoes) images=(--images "folder:$D/$c" --split=:-1000 --held-out=-1000:-500) ;;
      *) echo "unknown category $c"; exit 2 ;;
    esac
    .venv/bin/landmarks calibrate "adapters/$c.safetensors" "${images[@]}" --threads 1 | tee "runs/calibrate/$c.txt"
  done
done
