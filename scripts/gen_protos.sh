#!/usr/bin/env bash
# Regenerate landmarks/v1/*_pb2*.py from protos/landmarks/v1/landmarks.proto.
# The generated files are committed; tests/serving/test_protos.py checks they are current.
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: the repository root)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root}"
python="${PYTHON:-python}"
if [ -x "$root/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then python="$root/.venv/bin/python"; fi
mkdir -p "$out/landmarks/v1"
"$python" -m grpc_tools.protoc -I"$root/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  landmarks/v1/landmarks.proto
touch "$out/landmarks/v1/__init__.py"
