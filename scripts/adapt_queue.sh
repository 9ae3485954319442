# Sourced by the training queues (scripts/faces_probes.sh, scripts/category_runs.sh): what every
# queued run does the same way. `queue_run NAME ARGS...` runs `landmarks adapt ARGS --out
# runs/probes/NAME` (resumed if that run has a checkpoint), its output in runs/probes/NAME.log,
# a line when it starts and ends. The queue's process group is in runs/training.pid while it runs,
# for scripts/paused.sh.
# the process *group* (scripts/paused.sh stops all of it): a queue started inside another script's
# group (`setsid bash -c 'scripts/category_runs.sh ...; ...'`) is not its own group leader
ps -o pgid= $$ | tr -d ' ' > runs/training.pid
trap 'rm -f runs/training.pid' EXIT

queue_run() {
  local name=$1 out=runs/probes/$1
  shift
  local resume=()
  [[ -f $out/checkpoint.pt ]] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $name: $*"
  .venv/bin/landmarks adapt "$@" --out "$out" "${resume[@]}" > "runs/probes/$name.log" 2>&1
  echo "$(date -u +%FT%TZ) done $name: $(tail -n 1 "$out/history.jsonl")"
}
