#!/usr/bin/env bash
# Run a command with the background training (its process group, in runs/training.pid) stopped, so
# benchmarks and tests do not share the 2 cores with it. Several may run at once: the training
# continues when the last of them ends, however it ends.
# Usage: scripts/paused.sh .venv/bin/python -m pytest -q
cd "$(dirname "$0")/.."
pgid=$(cat runs/training.pid 2>/dev/null || true)
holders=runs/paused.d
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
