#!/usr/bin/env bash
# The core's quality/latency frontier: each candidate width trains on LSPET rows :8500 (validation
# 8500:9000; rows 9000: stay untouched) with the same recipe for the same compute, about 60 minutes
# of an unpaused 2-core AVX-512 BF16 machine each: steps = measured img/s x 3600 / 16
# (`landmarks train-core --arch A --steps 40` measures img/s; bf16 where the CPU has it natively).
# Resumable: run it again and each candidate continues from its last checkpoint (every 500 steps);
# a finished candidate is skipped. Logs in runs/probe-<arch>.log, curves in runs/probe-<arch>/.
# Run it in the background in its own process group and record the group for scripts/paused.sh:
#   setsid nohup scripts/core_probes.sh > runs/core_probes.out 2>&1 & echo $! > runs/training.pid
set -uo pipefail
cd "$(dirname "$0")/.."
landmarks=${LANDMARKS:-.venv/bin/landmarks}
for candidate in paper:4600 w192:7000 cpu:13700; do  # 20.5 / ~31 / 60.9 img/s measured here
  arch=${candidate%%:*} steps=${candidate##*:}
  out=runs/probe-$arch
  [[ -f $out/core.safetensors && -f $out/done ]] && continue
  "$landmarks" train-core --preset cpu --arch "$arch" --steps "$steps" --out "$out" --resume \
    >> "runs/probe-$arch.log" 2>&1 && touch "$out/done"
done
