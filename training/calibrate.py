"""`landmarks calibrate`: make an adapter servable in int8 (`landmarks serve --precision int8`).

The adapter is folded into its core and run in fp32 over the category's own images; each
convolution's input and output ranges are recorded (`landmarks.int8`). The int8 graph the server
would build from them (its sessions, `landmarks.runtime.sessions`) is then run beside fp32 on held-out images
of the same set, and the calibration is written into the adapter's metadata only if the points
stay within 0.5 px (mean and 95th percentile, in pixels of a 128 px crop) of fp32's: the serving
precision's acceptance rule (docs/benchmark.md, "Precision"). The adapter's tensors, and so its fingerprint and served version, are unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from landmarks.adapter_io import ArtifactError, load_adapter, read_artifact, save_with_metadata
from landmarks.images import images_to_pixels
from landmarks.int8 import (
    CALIBRATION_KEY,
    DEFAULT_KEEP_FP32,
    MAX_POINT_ERROR_PX,
    REFUSED_KEY,
    conv_names,
    kept_in_fp32,
    measure,
)
from landmarks.projection import fold
from landmarks.runtime.sessions import Runtime
from training.datasets import DatasetError, open_dataset
from training.evaluate import core_of
from training.validation import load_crops

__all__ = ["add_arguments", "calibrate", "main"]

_EPILOG = f"""\
The check: int8's points against fp32's on --held-out rows (never the calibration rows), in pixels
of a 128 px crop; accepted when the mean and the 95th percentile are both within {MAX_POINT_ERROR_PX} px.
If it is refused, keep more convolutions in fp32 (--keep-fp32 takes module names; `landmarks info
ADAPTER` lists the network) or calibrate on more images.

examples:
  landmarks calibrate adapters/faces.safetensors --images mtfl:../shared/data/mtfl/new_training.txt \\
      --split :6655 --held-out 6655:
  landmarks calibrate runs/mugs/adapter.safetensors --images folder:photos/mugs --out mugs-int8.safetensors
  landmarks calibrate adapters/cats.safetensors --images folder:cats/ --split=:-1000 --held-out=-1000:-500
  (rows counted from the end need the `=`: --held-out=-1000:-500)

Served: `landmarks serve` (its default --precision auto) runs a calibrated adapter in int8 on CPUs with
8-bit dot products (VNNI, AMX); --precision int8 requires every adapter to be calibrated.
"""


def _pixels(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Float crops -> the graph's inputs: uint8 HWC pixels, and boxes that are the crops themselves."""
    size = images.shape[-1]
    return images_to_pixels(images), np.array([[0.0, 0.0, size, size]] * len(images), np.float64)


def point_error(fp32: np.ndarray, int8: np.ndarray, size: int) -> np.ndarray:
    """Per-point distance between two (N, K, 2) predictions in pixels of a 128 px crop."""
    return np.linalg.norm(int8 - fp32, axis=-1) * (128.0 / size)


def calibrate(adapter_path: Path, images: str, split: str | None, held_out: str | None, out: Path | None,
              core_path: Path | None = None, keep: tuple[str, ...] = DEFAULT_KEEP_FP32,
              calibration_images: int = 200, check_images: int = 300, threads: int | None = None,
              record_refusal: bool = False) -> dict:
    """Calibrate, check, and (if accepted) write; returns what was measured ('accepted' says which).

    `record_refusal` (the end of a training run): a refused check is written into an adapter that has
    no calibration (`REFUSED_KEY`), so the server can say why it runs in fp32."""
    if (split is None) != (held_out is None):
        raise ValueError("give both --split and --held-out (disjoint rows), or neither")
    if split is None:  # the last rows (at most a quarter of the set) held out
        held = min(check_images, max(1, len(open_dataset(images)) // 4))
        split, held_out = f":-{held}", f"-{held}:"
    else:  # the check must run on rows the calibration never saw
        data = open_dataset(images)
        calibrated, checked = ({id(s) for s in data.subset(spec).samples} for spec in (split, held_out))
        shared = [i for i, s in enumerate(data.samples) if id(s) in calibrated and id(s) in checked]
        if shared:
            raise ValueError(f"--split {split} and --held-out {held_out} share {len(shared)} rows (rows {shared[0]} to "
                             f"{shared[-1]} of {len(data.samples)}); give disjoint rows, e.g. --split=:-300 "
                             "--held-out=-300:")
    named = read_artifact(adapter_path, expected_kind="adapter").metadata["core_sha256"]
    core = core_of(adapter_path, named, core_path)
    adapter = load_adapter(adapter_path, core)
    model = fold(core.build(), adapter.tensors, adapter.config)
    unknown = [k for k in keep if k and not kept_in_fp32(model, [k])]
    if unknown:
        raise ValueError(f"--keep-fp32: no convolution inside {', '.join(unknown)}; module names look like "
                         f"{', '.join(sorted({n.split('.')[0] for n in conv_names(model)})[:6])}")
    size = adapter.config.input_size
    calib, _ = load_crops(images, split, size, calibration_images)
    check, _ = load_crops(images, held_out, size, check_images)
    started = time.perf_counter()
    calibration = measure(model, calib, keep)
    candidate = dataclasses.replace(adapter, metadata={**adapter.metadata, CALIBRATION_KEY: calibration.to_json()})
    pixels, boxes = _pixels(check)
    points = {}
    for precision in ("fp32", "int8"):  # the server's own sessions (landmarks.runtime)
        prepared = Runtime(core, threads=threads, precision=precision).prepare(candidate)
        points[precision] = np.concatenate([prepared.locate(pixels[i:i + 64], boxes[i:i + 64])[0]
                                            for i in range(0, len(pixels), 64)])
    error = point_error(points["fp32"], points["int8"], size)
    check_result = {"mean_px": round(float(error.mean()), 4), "p95_px": round(float(np.percentile(error, 95)), 4),
                    "max_px": round(float(error.max()), 4), "images": len(check)}
    accepted = check_result["mean_px"] <= MAX_POINT_ERROR_PX and check_result["p95_px"] <= MAX_POINT_ERROR_PX
    result = {"adapter": str(adapter_path), "category": adapter.category, "input_size": size,
              "calibration_images": len(calib), "kept_fp32": list(calibration.keep_fp32), "quantised": len(calibration.quantised),
              "convolutions": len(conv_names(model)), **check_result, "accepted": accepted,
              "seconds": round(time.perf_counter() - started, 1)}
    target = out or adapter_path
    kept = dataclasses.replace(adapter, metadata={k: v for k, v in adapter.metadata.items() if k != REFUSED_KEY})
    if accepted:
        calibration = dataclasses.replace(calibration, check={**check_result, "calibration_images": len(calib)})
        save_with_metadata(target, kept, **{CALIBRATION_KEY: calibration.to_json()})
        result["out"] = str(target)
    elif record_refusal and CALIBRATION_KEY not in adapter.metadata:
        save_with_metadata(target, kept, **{REFUSED_KEY: json.dumps(check_result)})
        result["refusal_recorded"] = str(target)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("adapter", type=Path, metavar="ADAPTER", help="the category's adapter .safetensors file")
    parser.add_argument("--images", required=True, metavar="FORMAT:PATH",
                        help="the category's images, as `landmarks adapt` reads them (folder:DIR, mtfl:LIST, ...)")
    parser.add_argument("--split", default=None, metavar="START:STOP",
                        help="rows to calibrate on (default: all but the held-out rows)")
    parser.add_argument("--held-out", default=None, metavar="START:STOP",
                        help="rows to check int8 against fp32 on, disjoint from --split (default: the last --check-images "
                             "rows, at most a quarter of the set)")
    parser.add_argument("--calibration-images", type=int, default=200, metavar="N",
                        help="at most N images of --split, evenly spread (default 200)")
    parser.add_argument("--check-images", type=int, default=300, metavar="N",
                        help="at most N images of --held-out (default 300)")
    parser.add_argument("--keep-fp32", default=",".join(DEFAULT_KEEP_FP32), metavar="MODULES",
                        help="comma-separated modules whose convolutions stay fp32 (default: %(default)s: the first "
                             "and the last two, which moved the points most in int8)")
    parser.add_argument("--core", type=Path, default=None,
                        help="the adapter's core (default: the one its fingerprint names, beside it or in adapters/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the calibrated adapter (default: ADAPTER itself, rewritten atomically)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads for the check")


def main(args: argparse.Namespace) -> int:
    keep = tuple(k.strip() for k in args.keep_fp32.split(",") if k.strip())
    try:
        result = calibrate(args.adapter, args.images, args.split, args.held_out, args.out, args.core, keep,
                           args.calibration_images, args.check_images, args.threads)
    except (ArtifactError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kept = ", ".join(n.removesuffix(".weight") for n in result["kept_fp32"]) or "none"
    print(f"{result['category']}: {result['quantised']} of {result['convolutions']} convolutions in int8 "
          f"(fp32: {kept}), calibrated on {result['calibration_images']} images")
    print(f"int8 vs fp32 on {result['images']} held-out images, px at 128: mean {result['mean_px']:.3f}, "
          f"p95 {result['p95_px']:.3f}, max {result['max_px']:.3f} (rule: mean and p95 <= {MAX_POINT_ERROR_PX})")
    if not result["accepted"]:
        print("refused: nothing written; keep more convolutions in fp32 (--keep-fp32) or calibrate on more images",
              file=sys.stderr)
        return 1
    print(f"accepted: wrote {result['out']} (tensors and fingerprint unchanged); the default server (--precision auto) "
          "runs it in int8 on CPUs with VNNI or AMX")
    return 0
