"""One training curve for a core trained in stages (each stage `--init-from` the previous one).

    python scripts/core_curve.py runs/core-cpu runs/core-cpu2 runs/core-cpu3 --out docs/images/core_curve.png

Reads each run's `history.jsonl`, shifts its steps to follow the previous stage, and draws the
loss and the validation PCK of all stages on one axis, with a dashed line where a stage starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.plots import plot_curves


def read_history(run: Path) -> list[dict]:
    path = run / "history.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; pass the output folders of `landmarks train-core`")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # a resumed run appends from its checkpoint: keep the last record of each step
    return list({row["step"]: row for row in rows}.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="train-core output folders, first stage first")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    combined, starts, offset = [], [], 0
    for run in args.runs:
        history = sorted(read_history(run), key=lambda row: row["step"])
        starts.append(offset)
        combined += [{**row, "step": row["step"] + offset} for row in history]
        offset += history[-1]["step"] if history else 0
    stages = ", ".join(f"{b - a:,}" for a, b in zip(starts, starts[1:] + [offset]))
    plot_curves(combined, args.out, f"core (cpu arch, LSPET): stages of {stages} steps", metric_key="val_pck",
                metric_label="val PCK@0.2 (%)", stage_starts=starts[1:])
    print(f"wrote {args.out}: {offset:,} steps in {len(args.runs)} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
