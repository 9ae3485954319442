#!/usr/bin/env bash
# Run a command with the background training (its process group, in runs/training.pid) stopped, so
# benchmarks and tests do not share the 2 cores with it. Several may run at once: the training
# continues when the last of them ends, however it ends.
# Usage: scripts/paused.sh .venv/bin/python -m pytest -q
# LANDMARKS_TRAINING_PID names another pid file (e.g. a training started from another checkout).
root="$(cd "$(dirname "$0")/.." && pwd)"  # the command runs where it was called from
pgid=$(cat "${LANDMARKS_TRAINING_PID:-$root/runs/training.pid}" 2>/dev/null || true)
holders="$root/runs/paused.d/$pgid"  # per training: a holder of an earlier training never keeps this one stopped
if [[ -n $pgid ]] && kill -0 -- "-$pgid" 2>/dev/null; then
  mkdir -p "$holders" && touch "$holders/$$"
  kill -STOP -- "-$pgid"
  resume() {
    rm -f "$holders/$$"
    for f in "$holders"/*; do  # another paused.sh still running: leave the training stopped
      [[ -e $f ]] && kill -0 "${f##*/}" 2>/dev/null && return
      rm -f "$f"
    done
    kill -CONT -- "-$pgid"
  }
  trap resume EXIT
  echo "paused training (process group $pgid)" >&2
fi
"$@"
