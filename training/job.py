"""One adaptation job of the server, in a process of its own: `python -m training.job JOB_DIR --core CORE`.

The server (serving.adaptations) writes JOB_DIR/options.json and the uploaded images in
JOB_DIR/images/, starts this process at a lower priority, and reads what it prints: one JSON object a
line on stdout,

    {"event": "step", "step": 12, "steps": 1500}
    {"event": "phase", "phase": "calibrating"}
    {"event": "done", "adapter": PATH, "validation": {...}, "calibration": {...}}

and on failure {"event": "error", "message": ...} with exit status 2 (a bad job: the images, the
options) or 1 (anything else). The log goes to stderr. The same report is also written to
JOB_DIR/result.json, so a server that restarts between the end of training and the registration
finds it. Run again on the same JOB_DIR, training resumes from JOB_DIR/run/checkpoint.pt.

Steps: train (`landmarks adapt`'s code, the last `held_out` images of the folder held out and scored
every --picture-every steps: consistency, spread, points on a white background), then calibrate int8
on the training images, checked on the held-out ones (`landmarks calibrate`'s code; an adapter the
check refuses stays fp32). Registering the result is the server's part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["HOLD_ENV", "main", "run_job"]

# tests: stop after this step (its checkpoint written) and wait to be killed, as a server restart would
HOLD_ENV = "LANDMARKS_JOB_HOLD_AT_STEP"


def _emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def run_job(job_dir: Path, core: Path) -> dict:
    """Train, validate and calibrate; returns the report (also in JOB_DIR/result.json)."""
    import torch

    from training.adapt import PRESETS, AdaptConfig, adapt
    from training.calibrate import calibrate

    options = json.loads((job_dir / "options.json").read_text())
    threads = int(options.get("threads") or 1)
    torch.set_num_threads(threads)
    held = int(options["held_out"])
    images = f"folder:{job_dir / 'images'}"
    values = {**PRESETS[options["preset"]], "images": images, "core": str(core), "category": options["category"],
              "out": str(job_dir / "run"), "num_landmarks": int(options["num_landmarks"]),
              "names": options.get("names", ""), "train_split": f":-{held}", "val": images,
              "val_split": f"-{held}:", "workers": 0, "device": options.get("device", "auto")}
    if options.get("steps"):
        values["steps"] = int(options["steps"])
    if options.get("image_size"):
        values["image_size"] = int(options["image_size"])
    cfg = AdaptConfig(**values)
    hold = int(os.environ.get(HOLD_ENV, "0") or 0)

    def on_step(state) -> None:
        _emit({"event": "step", "step": state.step, "steps": cfg.steps})
        if hold and state.step == hold:
            while True:  # a stand-in for a server killed mid-job (tests)
                time.sleep(1.0)

    _emit({"event": "phase", "phase": "training"})
    adapter = adapt(cfg, resume=True, command=f"server adaptation job {job_dir.name}", on_step=on_step)
    history = [json.loads(line) for line in (job_dir / "run" / "history.jsonl").read_text().splitlines() if line]
    scored = [h for h in history if "val_consistency" in h]
    validation = {k.removeprefix("val_"): v for k, v in (scored[-1] if scored else {}).items() if k.startswith("val_")}
    validation["held_out_images"] = held
    _emit({"event": "phase", "phase": "calibrating"})
    try:
        result = calibrate(adapter, images, f":-{held}", f"-{held}:", None, core, threads=threads,
                           record_refusal=True)
        calibration = {k: result[k] for k in ("accepted", "mean_px", "p95_px", "max_px", "images", "calibration_images")}
    except Exception as exc:  # noqa: BLE001  the adapter still serves in fp32
        calibration = {"accepted": False, "error": str(exc)}
    report = {"event": "done", "adapter": str(adapter), "validation": validation, "calibration": calibration,
              "steps": cfg.steps}
    _write_json(job_dir / "result.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.job", description=__doc__.split("\n\n")[0])
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--core", type=Path, required=True)
    parser.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by N")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    from landmarks.adapter_io import ArtifactError
    from training.datasets import DatasetError

    try:
        _emit(run_job(args.job_dir, args.core))
    except (ArtifactError, DatasetError, ValueError, FileNotFoundError) as exc:
        _emit({"event": "error", "message": str(exc)})
        return 2
    except Exception as exc:  # noqa: BLE001  reported to the server, which records it on the job
        import traceback

        traceback.print_exc()
        _emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
