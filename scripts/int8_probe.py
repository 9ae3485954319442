"""int8 for one category: static QDQ quantisation of its exported graph, calibrated on the category's
own images, against fp32 on held-out ones (issue 16, point 4: accepted only where the points stay
within 0.5 px at 128 of fp32).

    python scripts/int8_probe.py                         # the shipped faces adapter, MTFL images
    python scripts/int8_probe.py --adapter adapters/faces.safetensors --calibrate 200 --held-out 200
    python scripts/int8_probe.py --keep-fp32 stem,top_conv,head --calibration percentile   # fewer layers in int8

The adapter is exported as `landmarks export` does (`landmarks.runtime.export`), its convolutions
quantised with ONNX Runtime's `quantize_static` (QDQ, int8 weights per channel, uint8 activations,
MinMax calibration on `--calibrate` images of the training list; `--calibration` picks another of
ONNX Runtime's methods, `--keep-fp32` leaves the convolutions whose node names contain any of the given
substrings in fp32, e.g. the first and the last ones); the soft-argmax and the mapping into the box stay fp32. Each image is one whole-image crop at the adapter's size (the server's
`crop_square`). Printed: the point error of int8 against fp32 on `--held-out` images of the test
list, in pixels of a 128 px crop (mean, p95, max), and the median ms per call of both sessions at
batch 1 and 16, alternating block by block, with the server's session options.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from PIL import Image

from landmarks.adapter_io import load_adapter, load_core
from landmarks.images import crop_square
from landmarks.runtime.export import export_adapter
from serving.backends import make_backend


def crops(root: Path, listing: str, n: int, size: int, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    lines = (root / listing).read_text().split("\n")
    pixels, boxes = [], []
    for line in lines[skip:]:
        if len(pixels) == n:
            break
        if not line.strip():
            continue
        image = Image.open(root / line.split()[0]).convert("RGB")
        side = max(image.width, image.height)  # the whole image, made square as the server does
        square = ((image.width - side) / 2, (image.height - side) / 2, (image.width + side) / 2, (image.height + side) / 2)
        pixels.append(crop_square(image, square, size))
        boxes.append(square)
    return np.stack(pixels), np.asarray(boxes, np.float64)


class Reader(CalibrationDataReader):
    def __init__(self, pixels: np.ndarray, boxes: np.ndarray) -> None:
        self._items = iter([{"pixels": pixels[i:i + 1], "boxes": boxes[i:i + 1]} for i in range(len(pixels))])

    def get_next(self):
        return next(self._items, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, default=Path("adapters/faces.safetensors"))
    parser.add_argument("--core", type=Path, default=Path("adapters/core.safetensors"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mtfl"))
    parser.add_argument("--train-list", default="new_training.txt")
    parser.add_argument("--test-list", default="new_testing.txt")
    parser.add_argument("--calibrate", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--held-out-skip", type=int, default=0,
                        help="start the held-out images this many rows into their list: choose what to keep in fp32 "
                             "on validation rows (--test-list new_training.txt --held-out-skip 6655, issue 18's "
                             "validation rows), then score the choice once on the test list")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--calibration", choices=["minmax", "percentile", "entropy"], default="minmax")
    parser.add_argument("--keep-fp32", default="", help="comma-separated substrings of Conv node names to leave in fp32")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the compared sessions "
                        "(default: the server's)")
    parser.add_argument("--no-timing", action="store_true", help="only the point error (e.g. beside a training)")
    args = parser.parse_args()
    core = load_core(args.core)
    adapter = load_adapter(args.adapter, core)
    size = adapter.config.input_size
    cal_pixels, cal_boxes = crops(args.data, args.train_list, args.calibrate, size)
    test_pixels, test_boxes = crops(args.data, args.test_list, args.held_out, size, skip=args.held_out_skip)
    backend = make_backend("onnxruntime", core, threads=args.threads)  # for its session options
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        model = export_adapter(core, adapter)
        fp32_path.write_bytes(model.SerializeToString())
        keep = [k for k in args.keep_fp32.split(",") if k]
        excluded = [n.name for n in model.graph.node if n.op_type == "Conv" and any(k in n.name for k in keep)]
        t0 = time.perf_counter()
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[args.calibration]
        quantize_static(str(fp32_path), str(int8_path), Reader(cal_pixels, cal_boxes), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=excluded, calibrate_method=method)
        quantise_s = time.perf_counter() - t0
        sessions = {name: ort.InferenceSession(str(path), backend.session_options(),
                                               providers=["CPUExecutionProvider"])
                    for name, path in (("fp32", fp32_path), ("int8", int8_path))}
        int8_mb = int8_path.stat().st_size / 1e6
    feeds = {"pixels": test_pixels, "boxes": test_boxes}
    fp32_points = sessions["fp32"].run(["points"], feeds)[0]
    int8_points = sessions["int8"].run(["points"], feeds)[0]
    side = test_boxes[:, 2] - test_boxes[:, 0]
    error = np.linalg.norm(int8_points - fp32_points, axis=-1) * (128 / side)[:, None]  # px at 128
    per_image = error.mean(axis=1)
    print(f"{adapter.category}: K={adapter.num_landmarks}, {size} px; calibrated on {len(cal_pixels)} images "
          f"of {args.train_list} ({args.calibration}, {quantise_s:.1f} s), evaluated on {len(test_pixels)} of "
          f"{args.test_list}; int8 file {int8_mb:.1f} MB; {len(excluded)} of "
          f"{sum(n.op_type == 'Conv' for n in model.graph.node)} convolutions kept in fp32")
    print(f"int8 vs fp32 point error, px at 128: mean {error.mean():.3f}, p95 {np.percentile(error, 95):.3f}, "
          f"max {error.max():.3f}; images whose mean error is over 0.5 px: {(per_image > 0.5).sum()}")
    verdict = "accepted" if error.mean() <= 0.5 and np.percentile(error, 95) <= 0.5 else "refused"
    print(f"verdict: {verdict} (rule: mean and p95 of the point error within 0.5 px at 128)")
    if args.no_timing:
        return
    times: dict[tuple[str, int], list[float]] = {}
    for batch in (1, 16):
        one = {"pixels": test_pixels[:batch], "boxes": test_boxes[:batch]}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                session.run(None, one)
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    session.run(None, one)
                    times.setdefault((name, batch), []).append((time.perf_counter() - t0) * 1e3)
    for batch in (1, 16):
        f, i = statistics.median(times["fp32", batch]), statistics.median(times["int8", batch])
        print(f"batch {batch:>2}: fp32 {f:.2f} ms, int8 {i:.2f} ms ({f / i:.2f}x)")


if __name__ == "__main__":
    main()
