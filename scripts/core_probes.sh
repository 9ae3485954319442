#!/usr/bin/env bash
# The core's quality/latency frontier, in two parts:
#
#   scripts/core_probes.sh train   quality: each candidate width trains on LSPET rows :8500
#                                  (validation 8500:9000; rows 9000: stay untouched) with the same
#                                  recipe for the same compute, ~60 minutes of an unpaused 2-core
#                                  AVX-512 BF16 machine each: steps = measured img/s x 3600 / 16
#                                  (`landmarks train-core --arch A --steps 40` measures img/s).
#                                  Resumable: run it again and each candidate continues from its last
#                                  checkpoint (every 500 steps); a finished one is skipped. Logs in
#                                  runs/probe-<arch>.log, curves in runs/probe-<arch>/.
#   scripts/core_probes.sh cost    serving cost: for each width a core of that architecture (random
#                                  weights: the cost does not depend on them) served by `landmarks
#                                  serve` on a free port and measured by `landmarks bench` (lone-request
#                                  p50, crops/s, register -> served); JSON in
#                                  docs/bench/frontier-<arch>.json. The bench's adapters carry noise
#                                  calibrations with no check, so the default (auto) serves them in
#                                  fp32; PRECISION=int8 serves them with --precision int8 and writes
#                                  docs/bench/frontier-<arch>-int8.json.
#
# Train in the background in its own process group and record it for scripts/paused.sh:
#   setsid nohup scripts/core_probes.sh train > runs/core_probes.out 2>&1 & echo $! > runs/training.pid
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${LANDMARKS_BIN:-.venv/bin}
candidates="paper:4600 w192:9000 cpu:13700"  # steps from 20.5 / 40 / 60.9 img/s measured here

train() {
  for candidate in $candidates; do
    local arch=${candidate%%:*} steps=${candidate##*:} out=runs/probe-${candidate%%:*}
    [[ -f $out/done ]] && continue
    "$bin/landmarks" train-core --preset cpu --arch "$arch" --steps "$steps" --out "$out" --resume \
      >> "runs/probe-$arch.log" 2>&1 && touch "$out/done"
  done
}

cost() {
  for candidate in $candidates; do
    local arch=${candidate%%:*} store
    store=$(mktemp -d)
    "$bin/python" - "$arch" "$store/core.safetensors" <<'PY'
import sys

import torch

from landmarks.adapter_io import save_core
from landmarks.hourglass import ARCHITECTURES, LandmarkHourglass

torch.manual_seed(0)
model = LandmarkHourglass(ARCHITECTURES[sys.argv[1]]()).eval()
save_core(sys.argv[2], model, command=f"scripts/core_probes.sh cost ({sys.argv[1]}, random weights)")
PY
    local port
    port=$("$bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    "$bin/landmarks" serve --port "$port" --adapters "$store" ${PRECISION:+--precision "$PRECISION"} \
      > "$store/serve.log" 2>&1 &
    local server=$!
    "$bin/landmarks" bench --server "127.0.0.1:$port" --core "$store/core.safetensors" --adapter-size 128 \
      --json "docs/bench/frontier-$arch${PRECISION:+-$PRECISION}.json" "${BENCH_ARGS[@]}" || echo "bench failed for $arch" >&2
    kill "$server"; wait "$server" 2>/dev/null
    rm -rf "$store"
  done
}

BENCH_ARGS=("${@:2}")
case "${1:-}" in
  train) train ;;
  cost) cost ;;
  *) sed -n '2,21p' "$0"; exit 2 ;;
esac
