#!/usr/bin/env bash
# Before a lock refresh: install the newest releases pyproject.toml's ranges allow (ignoring the
# locks) into a throwaway venv and run the default suite there. Green means `scripts/lock.sh --upgrade`
# is safe to commit; red shows which upstream release breaks what, while CI stays on the lock.
# Not part of CI (an upstream release must never turn CI red).
# Usage: scripts/check_latest.sh [pytest args]   e.g. scripts/check_latest.sh -x -q tests/serving
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q --upgrade --upgrade-strategy eager -e '.[dev]'
"$venv/bin/pip" list --format=freeze > "${LATEST_FREEZE:-/dev/null}"
echo "newest releases installed; differences from requirements/dev.txt:" >&2
"$venv/bin/python" - <<'PY' >&2
import re, subprocess, sys
locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", open("requirements/dev.txt").read(), re.M))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(k): v for k, v in locked.items()}
for line in subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True,
                           text=True).stdout.splitlines():
    name, _, version = line.partition("==")
    if norm(name) in locked and locked[norm(name)] != version:
        print(f"  {name}: {locked[norm(name)]} -> {version}")
PY
"$venv/bin/python" -m pytest "$@"
