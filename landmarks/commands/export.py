"""landmarks export: one category (adapter + its core, folded) as a self-contained ONNX file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "main"]

_EPILOG = """\
The file runs in any ONNX Runtime (or other ONNX) client without this package:

  inputs   pixels  (B, S, S, 3) uint8  RGB crops, S = the adapter's input size (metadata input_size)
           boxes   (B, 4)       float64  x0, y0, x1, y1 of the image region each crop was resized
                                         from, in the original image's pixels (edges)
  outputs  points      (B, K, 2) float32  x, y in the original image's pixels (pixel centres at integers)
           confidence  (B, K)    float32  peak of each landmark's spatial softmax

  import onnxruntime as ort
  session = ort.InferenceSession("faces.onnx")
  points, confidence = session.run(None, {"pixels": crops, "boxes": boxes})

Its metadata (category, num_landmarks, landmark_names, input_size, core_sha256, adapter_sha256,
opset) is in the model's metadata_props: `session.get_modelmeta().custom_metadata_map`.

examples:
  landmarks export adapters/faces.safetensors --out faces.onnx
  landmarks export runs/mugs/adapter.safetensors --core adapters/core.safetensors --out mugs.onnx
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("adapter", type=Path, metavar="ADAPTER", help="the category's adapter .safetensors file")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.onnx", help="where to write the model")
    parser.add_argument("--core", type=Path, default=None,
                        help="the core the adapter was trained on (default: core.safetensors next to ADAPTER)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")


def main(args: argparse.Namespace) -> int:
    from landmarks.adapter_io import ArtifactError, load_adapter, load_core
    from landmarks.runtime.export import export_adapter
    from landmarks.runtime.graph import OPSET

    core_path = args.core or args.adapter.parent / "core.safetensors"
    for what, path in (("adapter", args.adapter), ("core", core_path)):
        if not path.is_file():
            hint = "" if what == "adapter" or args.core else "; pass --core with the core the adapter was trained on"
            print(f"error: no {what} file {path}{hint}", file=sys.stderr)
            return 2
    try:
        core = load_core(core_path)
        adapter = load_adapter(args.adapter, core)
        model = export_adapter(core, adapter, args.opset or OPSET)
    except (ArtifactError, ValueError) as exc:  # a broken file, or weights that fold to NaN/Inf
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(args.out)
    print(f"wrote {args.out}: category {adapter.category!r}, K={adapter.num_landmarks}, "
          f"{adapter.config.input_size} px crops, core {core.sha256[:12]}, adapter {adapter.sha256[:12]}, "
          f"opset {args.opset or OPSET}, {args.out.stat().st_size / 1e6:.1f} MB")
    return 0
