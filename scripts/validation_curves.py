"""The validation curve of one lineage of runs: forward, backward and consistency against steps.

    python scripts/validation_curves.py runs/probes/faces-128 runs/probes/faces-128-more \
        --out docs/images/faces_128_curve.png --title "faces at 128 px"

Each RUN is a `landmarks adapt --out` folder; their `history.jsonl` validation records (the steps
where `--val` scored the detector) are drawn one after the other, each run's steps counted on from
the end of the one before (a warm start continues a lineage), with a dashed line where a run starts.
Forward and backward errors (% inter-ocular, annotated validation) on the left axis, consistency (px
at 128) on the right; runs without annotations (cats, shoes) have consistency on the left and the
points' spread (px at 128, where recorded) on the right.

    python scripts/validation_curves.py runs/probes/cats-128 runs/probes/cats-128-more \
        runs/probes/cats-128-final --steps-before 1750 --out docs/images/cats_128_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "val_consistency" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, in the order they continued each other")
    parser.add_argument("--out", type=Path, required=True, help="picture to write (.png)")
    parser.add_argument("--title", default="validation", help="the picture's title")
    parser.add_argument("--steps-before", type=int, default=0,
                        help="steps of the lineage before the first run (e.g. at another input size)")
    args = parser.parse_args()
    fig, left = plt.subplots(figsize=(8, 4))
    right = left.twinx()
    offset, series = args.steps_before, {"val_forward": [], "val_backward": [], "val_consistency": [],
                                         "val_spread": []}
    for run in args.runs:
        rows = records(run)
        if not rows:
            raise SystemExit(f"{run}: no validation records in history.jsonl (was it run with --val?)")
        if offset:
            left.axvline(offset, color="grey", linestyle="--", linewidth=1)
        left.annotate(run.name, (offset, 1.0), xycoords=("data", "axes fraction"), fontsize=8, va="bottom")
        for key, values in series.items():
            values += [(offset + r["step"], r[key]) for r in rows if key in r]
        offset += rows[-1]["step"]
    annotated = bool(series["val_forward"])
    lines = ((("val_forward", "tab:red", left), ("val_backward", "tab:purple", left),
              ("val_consistency", "tab:blue", right)) if annotated else
             (("val_consistency", "tab:blue", left), ("val_spread", "tab:green", right)))
    for key, colour, axis in lines:
        if series[key]:
            steps, values = zip(*series[key])
            axis.plot(steps, values, "o-", color=colour, label=key.removeprefix("val_"))
    left.set_xlabel("steps (of the lineage)" if args.steps_before else "steps")
    if annotated:
        left.set_ylabel("forward / backward error (% inter-ocular)")
        right.set_ylabel("consistency (px at 128)", color="tab:blue")
    else:
        left.set_ylabel("consistency (px at 128)", color="tab:blue")
        right.set_ylabel("spread (px at 128)", color="tab:green")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], loc="upper right" if annotated else "upper left", fontsize=8)
    left.set_title(args.title, pad=14)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
