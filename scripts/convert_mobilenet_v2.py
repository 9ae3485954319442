"""Convert the quantised TFLite MobileNetV2 1.0 224 (ImageNet) into a float safetensors file for PyTorch.

Why: the paper's reconstruction loss uses VGG-19 ImageNet features, but no VGG weights can be obtained on
the machines this project is developed on. The only ImageNet-trained network at hand is Coral's test-data
`mobilenet_v2_1.0_224_quant.tflite` (Apache-2.0). This script reads its flatbuffer with the pure-python
`tflite` schema package (no TensorFlow needed), dequantises every constant tensor and writes
`training/assets/mobilenet_v2_imagenet.safetensors`, which `training.perceptual.MobileNetV2Features` loads.

What the conversion does:
  * weights: uint8 (or int8) with per-tensor or per-channel scale/zero point -> float: (q - zp) * scale;
  * biases: int32 with zero point 0 and scale input_scale * weight_scale (checked against the stored scale);
  * layouts: CONV_2D weights OHWI -> OIHW; DEPTHWISE_CONV_2D weights 1HWO -> O1HW (depth multiplier 1);
  * batch norm is already folded into the conv weights and biases in the file; activations are ReLU6
    (fused) or none (the linear bottleneck projections and the logits);
  * the graph is checked against the MobileNetV2 layout the PyTorch module hard-codes (strides, SAME
    padding, activations, residual adds); any mismatch is an error rather than a silently wrong network.

The input quantisation of the file (scale 1/128, zero point 128 for a uint8 pixel p) means the float
network sees (p - 128) / 128; for images x in [0, 1] that is (255 x - 128) / 128. It is read from the file
and stored in the metadata.

Usage (from the repository root):
    .venv/bin/python scripts/convert_mobilenet_v2.py \
        --tflite ../shared/models/mobilenet_v2/mobilenet_v2_1.0_224_quant.tflite \
        --out training/assets/mobilenet_v2_imagenet.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TFLITE = REPO.parent / "shared/models/mobilenet_v2/mobilenet_v2_1.0_224_quant.tflite"
DEFAULT_OUT = REPO / "training/assets/mobilenet_v2_imagenet.safetensors"
LICENCE = "Apache-2.0 (Coral test data, TensorFlow MobileNetV2)"
FORMAT_VERSION = "1"

# TFLite enums (schema.fbs): tensor types, padding and fused activations we accept.
_NP_TYPES = {2: np.int32, 3: np.uint8, 9: np.int8}
_PAD_SAME = 0
_ACT_NONE, _ACT_RELU6 = 0, 3


def _scope(tensor_name: str) -> str:
    """'...;MobilenetV2/expanded_conv_3/expand/weights_quant/...' -> 'expanded_conv_3/expand'."""
    found = re.findall(r"MobilenetV2/([\w/]+?)/weights", tensor_name)
    if not found:
        raise ValueError(f"cannot name the layer of weight tensor {tensor_name!r}")
    return found[-1]


class _Reader:
    def __init__(self, buf: bytes):
        import tflite  # the flatbuffer schema, pure python

        self.tflite = tflite
        self.model = tflite.Model.GetRootAsModel(buf, 0)
        if self.model.SubgraphsLength() != 1:
            raise ValueError("expected one subgraph")
        self.graph = self.model.Subgraphs(0)
        codes = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        self.ops = []
        for i in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(i)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            self.ops.append((codes[builtin], op))

    def tensor(self, index: int):
        return self.graph.Tensors(index)

    def quant(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        q = self.tensor(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            raise ValueError(f"tensor {index} is not quantised")
        return (
            q.ScaleAsNumpy().astype(np.float64),
            q.ZeroPointAsNumpy().astype(np.int64),
            q.QuantizedDimension(),
        )

    def raw(self, index: int) -> np.ndarray:
        t = self.tensor(index)
        data = self.model.Buffers(t.Buffer()).DataAsNumpy()
        if np.ndim(data) == 0:  # flatbuffers returns 0 for an empty vector
            raise ValueError(f"tensor {index} ({t.Name().decode()}) has no constant data")
        return np.frombuffer(data.tobytes(), dtype=_NP_TYPES[t.Type()]).reshape(t.ShapeAsNumpy())

    def dequantise(self, index: int) -> np.ndarray:
        q = self.raw(index).astype(np.float64)
        scale, zero, axis = self.quant(index)
        if scale.size > 1:  # per-channel
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (q - zero) * scale

    def options(self, op, cls):
        table = op.BuiltinOptions()
        if table is None:
            return None
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts


def convert(tflite_path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Return (float32 tensors in PyTorch layout, architecture description) for the TFLite file."""
    r = _Reader(tflite_path.read_bytes())
    tensors: dict[str, np.ndarray] = {}
    layers = []  # (scope, kind, stride, activation, input tensor, output tensor)
    adds = []  # (input a, input b, output)
    for name, op in r.ops:
        ins = [op.Inputs(j) for j in range(op.InputsLength())]
        out = op.Outputs(0)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = name == "DEPTHWISE_CONV_2D"
            cls = r.tflite.DepthwiseConv2DOptions if depthwise else r.tflite.Conv2DOptions
            o = r.options(op, cls)
            if o.StrideH() != o.StrideW() or o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
                raise ValueError("unexpected stride/dilation")
            if o.Padding() != _PAD_SAME:
                raise ValueError("expected SAME padding everywhere")
            if depthwise and o.DepthMultiplier() != 1:
                raise ValueError("expected depth multiplier 1")
            act = o.FusedActivationFunction()
            if act not in (_ACT_NONE, _ACT_RELU6):
                raise ValueError(f"unexpected fused activation {act}")
            x_idx, w_idx, b_idx = ins
            w = r.dequantise(w_idx)
            # Bias: int32, zero point 0, scale = input scale * weight scale (per channel if the weights are).
            b_scale, b_zero, _ = r.quant(b_idx)
            expect = r.quant(x_idx)[0] * r.quant(w_idx)[0]
            if not np.allclose(b_scale, expect, rtol=1e-5) or np.any(b_zero != 0):
                raise ValueError(f"bias scale of {r.tensor(b_idx).Name().decode()} is not input*weight scale")
            b = r.dequantise(b_idx)
            w = w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2)  # 1HWO->O1HW, OHWI->OIHW
            scope = _scope(r.tensor(w_idx).Name().decode())
            layers.append((scope, "dw" if depthwise else "conv", o.StrideH(), act, x_idx, out))
            tensors[scope] = (w.astype(np.float32), b.astype(np.float32))
        elif name == "ADD":
            o = r.options(op, r.tflite.AddOptions)
            if o is not None and o.FusedActivationFunction() != _ACT_NONE:
                raise ValueError("unexpected activation on a residual add")
            adds.append((ins[0], ins[1], out))
        elif name in ("AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX"):
            pass  # global average pool, squeeze, softmax: done in PyTorch
        else:
            raise ValueError(f"unexpected op {name}")

    # --- map the TF scopes onto the PyTorch module's names and check the architecture -------------------
    by_scope = {l[0]: l for l in layers}
    out: dict[str, np.ndarray] = {}

    def take(scope: str, key: str, stride: int, act: int) -> tuple:
        layer = by_scope.pop(scope)
        if layer[2] != stride or layer[3] != act:
            raise ValueError(f"{scope}: stride/activation {layer[2:4]} != expected {(stride, act)}")
        w, b = tensors[scope]
        out[f"{key}.weight"], out[f"{key}.bias"] = w, b
        return layer

    take("Conv", "stem", 2, _ACT_RELU6)
    blocks = []
    i = 0
    while f"expanded_conv{'' if i == 0 else f'_{i}'}/depthwise" in by_scope:
        tf = f"expanded_conv{'' if i == 0 else f'_{i}'}"
        has_expand = f"{tf}/expand" in by_scope
        if has_expand:
            first = take(f"{tf}/expand", f"blocks.{i}.expand", 1, _ACT_RELU6)
        dw = by_scope[f"{tf}/depthwise"]
        take(f"{tf}/depthwise", f"blocks.{i}.dw", dw[2], _ACT_RELU6)
        proj = take(f"{tf}/project", f"blocks.{i}.project", 1, _ACT_NONE)
        block_in = first[4] if has_expand else dw[4]
        residual = any({a, b} == {proj[5], block_in} for a, b, _ in adds)
        c_in = (
            out[f"blocks.{i}.expand.weight"].shape[1] if has_expand else out[f"blocks.{i}.dw.weight"].shape[0]
        )
        c_out = out[f"blocks.{i}.project.weight"].shape[0]
        if residual != (dw[2] == 1 and c_in == c_out):
            raise ValueError(f"{tf}: residual connection where MobileNetV2 has none (or vice versa)")
        blocks.append(
            {
                "in": int(c_in),
                "out": int(c_out),
                "stride": int(dw[2]),
                "expand": has_expand,
                "hidden": int(out[f"blocks.{i}.dw.weight"].shape[0]),
                "residual": residual,
            }
        )
        i += 1
    take("Conv_1", "head", 1, _ACT_RELU6)
    take("Logits/Conv2d_1c_1x1", "classifier", 1, _ACT_NONE)
    out["classifier.weight"] = out["classifier.weight"][:, :, 0, 0]  # 1x1 conv on a 1x1 map == linear
    if by_scope:
        raise ValueError(f"unconverted layers: {sorted(by_scope)}")
    if sum(b["residual"] for b in blocks) != len(adds):
        raise ValueError("not every ADD is a block residual")

    inp = r.graph.Inputs(0)
    in_scale, in_zero, _ = r.quant(inp)
    if r.tensor(inp).Type() != 3:
        raise ValueError("expected a uint8 input")
    arch = {
        "blocks": blocks,
        "input_scale": float(in_scale[0]),
        "input_zero_point": int(in_zero[0]),
        "input_size": [int(v) for v in r.tensor(inp).ShapeAsNumpy()[1:3]],
        "num_classes": int(out["classifier.weight"].shape[0]),
    }
    return out, arch


def _sort_header(path: Path) -> None:
    """Rewrite the safetensors JSON header with sorted keys, so the same input gives identical bytes.

    (safetensors serialises the metadata from a hash map, in an order that changes from run to run.)
    """
    import struct

    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n :])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tflite", type=Path, default=DEFAULT_TFLITE)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="float16 halves the file (7 MB) and is exact to ~1e-3 relative for these weights",
    )
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    tensors, arch = convert(args.tflite)
    dtype = getattr(torch, args.dtype)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for k, v in tensors.items()}
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise ValueError(f"{k} is not finite in {args.dtype}")
    s, z = arch["input_scale"], arch["input_zero_point"]
    metadata = {
        "format": "landmark-adapters/mobilenet_v2_features",
        "format_version": FORMAT_VERSION,
        "source": args.tflite.name,
        "source_sha256": hashlib.sha256(args.tflite.read_bytes()).hexdigest(),
        "license": LICENCE,
        "conversion_command": "python scripts/convert_mobilenet_v2.py --tflite "
        f"<models>/mobilenet_v2/{args.tflite.name} --out training/assets/{args.out.name} --dtype {args.dtype}",
        "input_normalisation": (
            f"RGB images x in [0,1]: (255*x - {z}) * {s} (TFLite uint8 input scale {s}, zero point {z})"
        ),
        "classes": f"{arch['num_classes']} logits, index 0 = background, 1..1000 = ImageNet (imagenet_labels.txt)",
        "architecture": json.dumps(arch),
        "dtype": args.dtype,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata=metadata)
    _sort_header(args.out)
    n = sum(v.numel() for v in state.values())
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {n:,} parameters, {len(state)} tensors)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
