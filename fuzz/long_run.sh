#!/bin/bash
# A long run of one harness: fuzz/long_run.sh HARNESS SECONDS [libFuzzer args...]
# Scratch corpus and findings in ${FUZZ_OUT:-/tmp/fuzz}/HARNESS/ (the committed seeds are only read).
# libFuzzer stops at a finding; this restarts it on the same scratch corpus until SECONDS are used.
# Runs at nice 10; segment logs (with -print_final_stats) and summary.txt are in the same folder.
set -u
h=$1; total=$2; shift 2
cd "$(dirname "$0")/.."
out=${FUZZ_OUT:-/tmp/fuzz}/$h; mkdir -p "$out/corpus" "$out/crashes"
py=${PYTHON:-.venv/bin/python}
start=$(date +%s); seg=0
while true; do
  left=$(( total - ($(date +%s) - start) ))
  [ "$left" -le 5 ] && break
  seg=$((seg + 1))
  nice -n 10 "$py" "fuzz/$h.py" "$out/corpus" "fuzz/corpus/$h" -max_total_time="$left" -print_final_stats=1 \
    -artifact_prefix="$out/crashes/" -timeout=60 -rss_limit_mb=4096 "$@" > "$out/seg$seg.log" 2>&1
  rc=$?
  echo "segment $seg rc=$rc at $(( $(date +%s) - start ))s" >> "$out/summary.txt"
  [ "$rc" -ne 77 ] && break  # 77: a finding (saved in crashes/); anything else: stop and look
done
grep -h "stat::number_of_executed_units\|stat::average_exec_per_sec\|DONE" "$out"/seg*.log
ls "$out/crashes"
