#!/usr/bin/env bash
# docs/images/quickstart_detect.png: what the quick start's `landmarks detect --draw` commands write
# (shipped adapters, run in process with --local, so no server is needed), side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for c in face:faces cat:cats shoe:shoes; do
  .venv/bin/landmarks detect --local --category "${c#*:}" "examples/${c%%:*}.jpg" --draw "$tmp/${c%%:*}.png" > /dev/null
done
.venv/bin/python - "$tmp" <<'PY'
import sys
from pathlib import Path
from PIL import Image

tmp = Path(sys.argv[1])
tiles = [Image.open(tmp / f"{n}.png").convert("RGB") for n in ("face", "cat", "shoe")]
height = 320
tiles = [t.resize((round(t.width * height / t.height), height)) for t in tiles]
out = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), height), "white")
x = 0
for t in tiles:
    out.paste(t, (x, 0))
    x += t.width + 8
out.save("docs/images/quickstart_detect.png")
print("wrote docs/images/quickstart_detect.png", out.size)
PY
