"""The face adapter's validation curve over its whole lineage, and what more steps would buy.

    python scripts/faces_forecast.py \
        --point 2500=11.65/12.89 --point 3500=11.15/12.57 \
        --run runs/faces-long@3500 --run runs/probes/faces-10k@5500 \
        --pair 11.65/12.89=16.33/15.32 --pair 10.87/11.58=15.34/13.74 --target 12 --img-per-s 22 \
        --out docs/images/faces_forecast.png

A lineage is one adapter trained in pieces, each warm-started from the last: `--run DIR@OFFSET` reads
DIR/history.jsonl (its validation rows, `landmarks adapt --val`) and shifts its steps by OFFSET, the
steps the adapter had when the piece started; `--point STEP=FORWARD/BACKWARD` adds a score measured
offline (`landmarks evaluate` on the same validation rows) where no history has it.

The forecast is a straight line through each error (forward, backward) against log10(steps), fitted
by least squares to the measured points: an error that falls by the same amount every time the
steps multiply by ten. It describes the measured range, not a law; extrapolating it is the
optimistic reading (learning curves usually flatten). `--pair FWD/BWD=FWD/BWD` gives an adapter's
validation and AFLW_M test errors: their mean differences map the test target (`--target`, both
errors) to validation ones. Hours are at `--img-per-s` images per second with batch `--batch` (this machine's
rate in the run's log).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

PAPER_STEPS = 200_000  # the paper: 200,000 iterations of batch 48
HORIZON = 1_000_000  # 5x the paper's schedule: a line fitted on a few thousand steps says nothing beyond


def lineage(runs: list[str], points: list[str]) -> list[tuple[int, float, float]]:
    """(step, forward, backward) of every validation score, by step."""
    scores: dict[int, tuple[float, float]] = {}
    for spec in points:
        step, _, values = spec.partition("=")
        fwd, _, bwd = values.partition("/")
        scores[int(step)] = (float(fwd), float(bwd or "nan"))
    for spec in runs:
        folder, _, offset = spec.partition("@")
        path = Path(folder) / "history.jsonl"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found; --run takes the --out folder of `landmarks adapt`")
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "val_forward" in row:
                scores[row["step"] + int(offset or 0)] = (row["val_forward"], row.get("val_backward", math.nan))
    return [(s, *scores[s]) for s in sorted(scores)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="DIR@OFFSET: a piece of the lineage")
    parser.add_argument("--point", action="append", default=[], help="STEP=FORWARD/BACKWARD measured offline")
    parser.add_argument("--pair", action="append", default=[],
                        help="VAL_FWD/VAL_BWD=TEST_FWD/TEST_BWD: one adapter on validation and on AFLW_M")
    parser.add_argument("--target", type=float, default=12.0, help="test (AFLW_M) forward and backward error to reach")
    parser.add_argument("--img-per-s", type=float, required=True, help="training images per second")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()

    rows = lineage(args.run, args.point)
    if len(rows) < 3:
        raise SystemExit("error: need at least 3 validation scores to fit a line")
    steps = np.array([r[0] for r in rows], dtype=float)
    errors = {"forward": np.array([r[1] for r in rows]), "backward": np.array([r[2] for r in rows])}
    pairs = [[tuple(float(v) for v in side.split("/")) for side in p.split("=")] for p in args.pair]
    print(f"{len(rows)} validation scores, steps {int(steps[0]):,} to {int(steps[-1]):,}; hours at "
          f"{args.img_per_s:g} img/s, batch {args.batch}")

    def hours(s: float) -> float:
        return s * args.batch / args.img_per_s / 3600

    fits, needs = {}, {}
    for i, (name, values) in enumerate(errors.items()):
        ok = np.isfinite(values)
        slope, intercept = np.polyfit(np.log10(steps[ok]), values[ok], 1)  # error = intercept + slope log10(steps)
        gap = float(np.mean([test[i] - val[i] for val, test in pairs])) if pairs else 0.0
        fits[name] = (intercept, slope, gap)
        print(f"{name}: {values[ok][0]:.2f} -> {values[ok][-1]:.2f}; fit {intercept:.2f} {slope:+.2f} x log10(steps); "
              f"AFLW_M = validation {gap:+.2f} (mean of {len(pairs)} adapters)")
        for s in (10_000, 20_000, 50_000, 100_000, PAPER_STEPS):
            at = intercept + slope * math.log10(s)
            print(f"  {s:>7,} steps: validation {at:5.2f}, AFLW_M ~{at + gap:5.2f}  ({hours(s):5.1f} h)")
        need = 10 ** ((args.target - gap - intercept) / slope) if slope < 0 else math.inf
        needs[name] = need
        print(f"  AFLW_M {name} {args.target:g} (validation {args.target - gap:.2f}): " + (
            f"~{need:,.0f} steps in all on the fitted line, ~{hours(need):.0f} h of this machine "
            f"({need * args.batch / 1e6:.1f}M crops)" if need <= HORIZON else
            f"not within {HORIZON:,} steps on the fitted line: more steps of this recipe do not get there"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    horizon = max([PAPER_STEPS] + [n for n in needs.values() if n <= HORIZON]) * 1.2
    xs = np.geomspace(steps[0], horizon, 100)
    for (name, values), color, marker in zip(errors.items(), ("tab:blue", "tab:orange"), "os"):
        intercept, slope, gap = fits[name]
        ax.plot(steps, values, marker, color=color, label=f"validation {name} (measured)")
        ax.plot(xs, intercept + slope * np.log10(xs), "--", color=color, alpha=0.7,
                label=f"{name} fit {intercept:.1f} {slope:+.2f} log10(steps)")
        ax.axhline(args.target - gap, color=color, lw=1, alpha=0.8,
                   label=f"AFLW_M {name} {args.target:g} (= validation {args.target - gap:.1f})")
    ax.axvline(PAPER_STEPS, color="grey", lw=1, ls=":", label="the paper's 200k steps (of batch 48)")
    ax.set_xscale("log")
    ax.set_xlabel("adaptation steps in all (batch 16)")
    ax.set_ylabel("% inter-ocular distance")
    ax.set_title("Face adapter: validation (MTFL rows 6655:) over its lineage, and the log-linear forecast")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
