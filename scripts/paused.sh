#!/usr/bin/env bash
# Run a command with the background training (its process group, in runs/training.pid) stopped,
# so benchmarks and tests do not share the 2 cores with it; it continues when the command ends,
# however it ends. Usage: scripts/paused.sh .venv/bin/python -m pytest -q
cd "$(dirname "$0")/.."
pgid=$(cat runs/training.pid 2>/dev/null || true)
if [[ -n $pgid ]] && kill -0 -- "-$pgid" 2>/dev/null; then
  kill -STOP -- "-$pgid"
  trap 'kill -CONT -- "-$pgid"' EXIT
  echo "paused training (process group $pgid)" >&2
fi
"$@"
