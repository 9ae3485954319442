#!/usr/bin/env bash
# Refresh the locks in requirements/ from pyproject.toml's ranges: every package pinned, with hashes.
#
#   scripts/lock.sh                 # keep today's pins where the ranges still allow them
#   scripts/lock.sh --upgrade       # take the newest releases the ranges allow
#   scripts/lock.sh --upgrade-package grpcio-tools   # move one package
#
# pip-tools rather than uv: pip sees this machine's local wheel indexes (/opt/wheels, the torch
# builds on disk) and applies the platform's pip constraints, which uv ignores; and the result is a
# plain requirements file that `pip install --require-hashes` installs anywhere, Docker included.
# The locks are resolved for Linux x86_64, CPython 3.11 (CI, Docker, the development machines);
# elsewhere install from pyproject.toml's ranges (`pip install -e '.[dev]'`).
#
# Check the newest releases before a refresh with scripts/check_latest.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
"$python" -m piptools --version >/dev/null 2>&1 || "$python" -m pip install -q 'pip-tools>=7.4'
compile() {  # OUT EXTRA...
  local out=$1; shift
  local extras=()
  for e in "$@"; do extras+=(--extra "$e"); done
  echo "locking $out (${*:-base})" >&2
  CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$python" -m piptools compile -q --generate-hashes \
    --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --resolver backtracking \
    "${extras[@]}" "${LOCK_ARGS[@]}" -o "$out" pyproject.toml
  # the dev extra names the project itself (landmark-adapters[train,serve]); the project is installed
  # from the checkout (`pip install --no-deps -e .`), never from a path baked into the lock
  "$python" - "$out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r"# WARNING: pip install will require.*?\n(?=[a-z0-9])", "", text, flags=re.S)
text = re.sub(r"^landmark-adapters @ .*\n(    #.*\n)*", "", text, flags=re.M)
open(sys.argv[1], "w").write(text)
PY
}
LOCK_ARGS=("$@")
# the largest set first (dev + ray); the other locks are constrained by it, so a package has one
# version in every lock and CI's second install (ray) changes nothing the first one installed
compile requirements/ray.txt dev ray
LOCK_ARGS+=(-c requirements/ray.txt)
compile requirements/dev.txt dev
compile requirements/serve.txt serve
compile requirements/train.txt train
# the CUDA image's ONNX Runtime (installed --no-deps over serve.txt, in place of onnxruntime)
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$python" -m piptools compile -q --generate-hashes --allow-unsafe \
  --no-emit-index-url --no-emit-find-links -c requirements/ray.txt -o requirements/gpu.txt requirements/gpu.in
