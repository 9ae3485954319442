"""landmarks info: what a core, adapter or network file holds (metadata, parameter counts, size), or the
counts of a built-in architecture."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from landmarks.adapter_io import ArtifactError, read_artifact
from landmarks.runtime.architecture import ARCHITECTURES, HEAD, adapter_shapes, convs, network_shapes

__all__ = ["add_arguments", "architecture_counts", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, nargs="?", help="a .safetensors core, adapter or network file")
    parser.add_argument("--arch", choices=["paper", "cpu", "tiny"],
                        help="instead of a file: parameter counts of a built-in architecture")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


def _count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))


def architecture_counts(config) -> dict[str, int]:
    layers = convs(config)  # from the config alone: no network is built
    convs3 = [c for c in layers if c.kernel == 3]
    core_convs = [c for c in layers if c.path != HEAD]
    return {
        "core_parameters": _count(network_shapes(config)),
        "conv3x3_layers": len(convs3),
        "sum_cout2_conv3x3": sum(c.out_ch**2 for c in convs3),
        "sum_cout2_all_core_convs": sum(c.out_ch**2 for c in core_convs),
        "adapter_parameters_k10": _count(adapter_shapes(config, 10, "all")),
    }


def print_architecture(arch: dict[str, int]) -> None:
    print(f"  architecture: core {arch['core_parameters']:,} parameters; {arch['conv3x3_layers']} 3x3 convs, "
          f"sum C_out^2 = {arch['sum_cout2_conv3x3']:,} (all core convs: {arch['sum_cout2_all_core_convs']:,}); "
          f"a K=10 adapter learns {arch['adapter_parameters_k10']:,}")


def main(args: argparse.Namespace) -> int:
    if args.file is None:
        if not args.arch:
            print("error: give a FILE or --arch NAME", file=sys.stderr)
            return 2
        config = ARCHITECTURES[args.arch]()
        arch = architecture_counts(config)
        if args.json:
            print(json.dumps({"arch": args.arch, "config": json.loads(config.to_json()), "architecture": arch}))
        else:
            print(f"architecture {args.arch!r}: {config.to_json()}")
            print_architecture(arch)
        return 0
    try:
        art = read_artifact(args.file)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = dict(art.metadata)
    kind = meta["kind"]
    info: dict[str, object] = {
        "file": str(args.file),
        "kind": kind,
        "file_bytes": args.file.stat().st_size,
        "tensor_sha256": art.sha256,
        "parameters": art.num_parameters(),
        "num_landmarks": art.num_landmarks,
        "input_size": art.config.input_size,
    }
    info["architecture"] = architecture_counts(art.config)
    info["metadata"] = {k: v for k, v in meta.items() if k != "config"}
    info["config"] = json.loads(meta["config"])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.file}: {kind}, {info['file_bytes'] / 1e6:.2f} MB, {info['parameters']:,} parameters")
    print(f"  K={art.num_landmarks}  input {art.config.input_size}x{art.config.input_size}  "
          f"tensors sha256 {art.sha256[:16]}")
    print_architecture(info["architecture"])
    for key in sorted(info["metadata"]):
        print(f"  {key}: {_summary(key, info['metadata'][key])}")
    return 0


def _summary(key: str, value: str) -> str:
    """A metadata value as a person reads it: the int8 calibration's ranges are for the server."""
    from landmarks.runtime.int8 import CALIBRATION_KEY, Int8Calibration, checked_int8

    if key != CALIBRATION_KEY:
        return value
    try:
        calibration = Int8Calibration.from_metadata({key: value})
    except ValueError as exc:
        return f"malformed ({exc})"
    check = calibration.check
    checked = (f"; int8 vs fp32 on {int(check['images'])} held-out images: mean {check['mean_px']:.3f} px, p95 "
               f"{check['p95_px']:.3f} px at 128" if {"images", "mean_px", "p95_px"} <= set(check) else "")
    kept = ", ".join(n.removesuffix(".weight") for n in calibration.keep_fp32) or "none"
    total = len(set(calibration.ranges) | set(calibration.keep_fp32))
    passed, why = checked_int8({key: value})
    served = ("--precision auto (the default) runs it in int8 on CPUs with VNNI or AMX" if passed
              else f"--precision auto runs it in fp32: {why}; --precision int8 runs it in int8")
    return f"{len(calibration.quantised)} of {total} convolutions in int8 (fp32: {kept}){checked}; {served}"
