"""The repository's figures, each drawn from the files it shows.

    # one training curve for a core trained in stages (each stage `--init-from` the previous one)
    python scripts/figures.py core-curve runs/core-cpu runs/core-cpu2 runs/core-cpu3 --out docs/images/core_curve.png
    python scripts/figures.py core-curve runs/probe-w192 runs/core-w192 --out docs/images/core_w192_curve.png
    # one validation curve for a lineage of warm-started `landmarks adapt` runs
    python scripts/figures.py validation-curve runs/probes/faces-128 runs/probes/faces-128-more \
        --out docs/images/faces_128_curve.png --title "faces at 128 px"
    python scripts/figures.py validation-curve runs/probes/cats-128 runs/probes/cats-128-more \
        runs/probes/cats-128-final --steps-before 1750 --out docs/images/cats_128_curve.png
    # the core widths' probes: validation PCK against crops seen, beside the shipped core
    python scripts/figures.py core-probes runs/probe-paper runs/probe-w192 runs/probe-cpu \
        --rows docs/core_probes --out docs/images/core_probes.png
    # the README's picture: the quick start's `landmarks detect --draw` on the three bundled photos
    python scripts/figures.py quickstart                     # docs/images/quickstart_detect.png

core-curve reads each run's `history.jsonl`, shifts its steps to follow the previous stage, and
draws the loss and the validation PCK of all stages on one axis, a dashed line where a stage starts.

core-probes writes each probe's validation rows (step, crops seen, PCK@0.2, learning rate) to
ROWS/<arch>.jsonl from its `history.jsonl` and draws them all on one axis against crops seen, the
shipped core's validation PCK (docs/core_eval_val.json) as a dashed line.

validation-curve draws each `landmarks adapt --out` folder's validation records (the steps where
`--val` scored the detector) one after the other, each run's steps counted on from the end of the
one before, a dashed line where a run starts. Forward and backward errors (% inter-ocular) on the
left axis, consistency (px at 128) on the right; runs without annotations (cats, shoes) have
consistency on the left and the points' spread on the right.

quickstart runs `landmarks detect --local --draw` (the shipped adapters in process, no server) on
examples/{face,cat,shoe}.jpg and puts the three pictures side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def history(run: Path) -> list[dict]:
    path = run / "history.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; pass the output folders of `landmarks train-core` / `adapt`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def core_curve(args) -> None:
    from training.plots import plot_curves

    combined, starts, offset = [], [], 0
    for run in args.runs:
        # a resumed run appends from its checkpoint: keep the last record of each step
        rows = sorted({row["step"]: row for row in history(run)}.values(), key=lambda row: row["step"])
        starts.append(offset)
        combined += [{**row, "step": row["step"] + offset} for row in rows]
        offset += rows[-1]["step"] if rows else 0
    stages = ", ".join(f"{b - a:,}" for a, b in zip(starts, starts[1:] + [offset]))
    config = args.runs[-1] / "config.json"
    arch = json.loads(config.read_text()).get("arch") if config.is_file() else None  # (older runs wrote none)
    what = f"stages of {stages} steps" if len(starts) > 1 else f"{offset:,} steps"
    plot_curves(combined, args.out, f"core ({arch + ' arch, ' if arch else ''}LSPET): {what}", metric_key="val_pck",
                metric_label="val PCK@0.2 (%)", stage_starts=starts[1:])
    print(f"wrote {args.out}: {offset:,} steps in {len(args.runs)} stages")


def core_probes(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    args.rows.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        config = json.loads((run / "config.json").read_text())
        arch, batch = config["arch"], config["batch_size"]
        rows = sorted({r["step"]: r for r in history(run) if "val_pck" in r}.values(), key=lambda r: r["step"])
        rows = [{"step": r["step"], "crops": r["step"] * batch, "val_pck": round(r["val_pck"], 2), "lr": r["lr"]}
                for r in rows]
        (args.rows / f"{arch}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        done = "" if (run / "done").exists() else ", running"
        ax.plot([r["crops"] / 1e3 for r in rows], [r["val_pck"] for r in rows], marker="o", ms=3,
                label=f"{arch}: {config['steps']:,} steps of {batch}{done}")
    shipped = json.loads((ROOT / "docs/core_eval_val.json").read_text())["mean_pck@0.2"]
    ax.axhline(shipped, color="k", ls="--", lw=1, label=f"shipped core (cpu width, ~370k crops), all 500 rows: {shipped:.1f}%")
    ax.set_xlabel("crops seen (thousands)")
    ax.set_ylabel("validation PCK@0.2 (%), LSPET 8,500-8,999\n(during training: 300 of the rows)")
    ax.set_title("core widths at ~60 minutes of a 2-core AVX-512 BF16 machine each")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} and {len(args.runs)} row files in {args.rows}")


def validation_curve(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(8, 4))
    right = left.twinx()
    offset = args.steps_before
    series: dict[str, list] = {"val_forward": [], "val_backward": [], "val_consistency": [], "val_spread": []}
    for run in args.runs:
        rows = [r for r in history(run) if "val_consistency" in r]
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


def quickstart(args) -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tiles = []
        for photo, category in (("face", "faces"), ("cat", "cats"), ("shoe", "shoes")):
            drawn = Path(tmp) / f"{photo}.png"
            subprocess.run([args.landmarks, "detect", "--local", "--category", category,
                            str(ROOT / "examples" / f"{photo}.jpg"), "--draw", str(drawn)],
                           check=True, stdout=subprocess.DEVNULL)
            tiles.append(Image.open(drawn).convert("RGB"))
    height = 320
    tiles = [t.resize((round(t.width * height / t.height), height)) for t in tiles]
    out = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), height), "white")
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 8
    out.save(args.out)
    print(f"wrote {args.out} {out.size}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="figure", required=True)
    p = sub.add_parser("core-curve", help="one training curve for a core trained in stages")
    p.add_argument("runs", type=Path, nargs="+", help="train-core output folders, first stage first")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.set_defaults(draw=core_curve)
    p = sub.add_parser("core-probes", help="the core widths' probes against crops seen")
    p.add_argument("runs", type=Path, nargs="+", help="train-core output folders, one per width")
    p.add_argument("--rows", type=Path, default=ROOT / "docs/core_probes", help="folder for <arch>.jsonl")
    p.add_argument("--out", type=Path, default=ROOT / "docs/images/core_probes.png", help="PNG to write")
    p.set_defaults(draw=core_probes)
    p = sub.add_parser("validation-curve", help="one validation curve for a lineage of adapt runs")
    p.add_argument("runs", nargs="+", type=Path, help="run folders, in the order they continued each other")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--title", default="validation", help="the picture's title")
    p.add_argument("--steps-before", type=int, default=0,
                   help="steps of the lineage before the first run (e.g. at another input size)")
    p.set_defaults(draw=validation_curve)
    p = sub.add_parser("quickstart", help="the README's picture of the three shipped adapters")
    p.add_argument("--out", type=Path, default=ROOT / "docs/images/quickstart_detect.png", help="PNG to write")
    p.add_argument("--landmarks", default=str(Path(sys.executable).with_name("landmarks")),
                   help="the `landmarks` command (default: beside this Python)")
    p.set_defaults(draw=quickstart)
    args = parser.parse_args(argv)
    args.draw(args)


if __name__ == "__main__":
    main()
