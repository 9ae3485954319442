"""int8 for one category: its folded convolutions quantised statically, calibrated on its own images.

Two halves, one format:
- **calibration** (`landmarks calibrate`; `landmarks.int8.measure`, in torch): the folded network
  runs in fp32 over the category's images; each quantised convolution's input and output range (min and max) is recorded under the
  convolution's weight name (ours, the same in every export), and stored in the adapter's metadata
  (`int8_calibration`, JSON) with the convolutions kept in fp32 and the check that accepted it: the
  points of the int8 graph against fp32's on held-out images, in pixels of a 128 px crop.
- **quantisation** (`--precision int8` of the onnxruntime backend, at registration): in the fp32
  graph each quantised convolution becomes QuantizeLinear -> QLinearConv -> DequantizeLinear (the
  int8 convolution ONNX Runtime's CPU kernels run), and the adapter's folded weights become int8
  weights per output channel, with uint8 activations whose scales come from the stored ranges.

The arithmetic is ONNX Runtime's `quantize_static` defaults (MinMax ranges, asymmetric uint8
activations, symmetric per-channel int8 weights, int32 biases). Neither its `quantize_static` nor
its QDQ format is used at registration: `quantize_static` rewrites and re-parses a model per call,
longer than a whole registration may take, and a QDQ graph (a Q/DQ pair around each convolution,
fused at session creation) makes the session slower to create than these QLinearConv nodes, for the
same kernels and points (docs/benchmark.md, "Where a lone request's time goes"). This graph edit is made once per
architecture, size and K; each adapter costs a few numpy operations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CALIBRATION_KEY", "DEFAULT_KEEP_FP32", "MAX_POINT_ERROR_PX", "REFUSED_KEY", "Int8Calibration",
           "checked_int8", "int8_graph", "int8_weights", "kept_in_fp32"]

CALIBRATION_KEY = "int8_calibration"  # the adapter metadata key
# The check a calibration failed, recorded (JSON: mean_px, p95_px, ...) where training ended with one,
# so that the server can say why the adapter runs in fp32; nothing else of a refused calibration is kept.
REFUSED_KEY = "int8_refused"
_FORMAT = 1
# the convolutions left in fp32 by default: the first (it sees raw pixels) and the last two (the
# heatmaps' logits), which moved the faces' points most in int8 (docs/benchmark.md, "Precision")
DEFAULT_KEEP_FP32 = ("stem", "top_conv", "head")
MAX_POINT_ERROR_PX = 0.5  # mean and p95 of int8's points against fp32's, px at 128: the acceptance rule


@dataclass(frozen=True)
class Int8Calibration:
    """What an adapter needs to be served in int8; `to_json` is its metadata value."""

    ranges: dict[str, tuple[float, float, float, float]]  # conv weight name -> input min, max, output min, max
    keep_fp32: tuple[str, ...] = ()  # conv weight names left in fp32
    check: dict[str, float] = field(default_factory=dict)  # what accepted it: mean_px, p95_px, max_px, images

    @property
    def quantised(self) -> frozenset[str]:
        return frozenset(self.ranges) - set(self.keep_fp32)

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "ranges": {k: list(v) for k, v in sorted(self.ranges.items())},
                           "keep_fp32": list(self.keep_fp32), "check": self.check})

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], label: str = "the adapter") -> Int8Calibration | None:
        """The calibration an adapter's metadata holds, None if it holds none; ValueError (saying
        what to do) if it is malformed: a user's file is checked before any number of it is used."""
        text = metadata.get(CALIBRATION_KEY)
        if text is None:
            return None
        fix = "calibrate it again (landmarks calibrate ADAPTER --images ...)"
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError(f"{label}: its {CALIBRATION_KEY} metadata is not JSON; {fix}") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{label}: its {CALIBRATION_KEY} metadata is not format {_FORMAT}; {fix}")
        ranges, keep, check = data.get("ranges"), data.get("keep_fp32", []), data.get("check", {})
        if not isinstance(ranges, dict) or not isinstance(keep, list) or not isinstance(check, dict):
            raise ValueError(f"{label}: its {CALIBRATION_KEY} needs ranges {{name: [4 numbers]}} and keep_fp32 "
                             f"[names]; {fix}")
        parsed: dict[str, tuple[float, float, float, float]] = {}
        for name, values in ranges.items():
            ok = (isinstance(values, list) and len(values) == 4
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
                  and values[0] <= values[1] and values[2] <= values[3])
            if not ok:
                raise ValueError(f"{label}: {CALIBRATION_KEY} range of {name[:80]!r} must be 4 finite numbers "
                                 f"(input min <= max, output min <= max); {fix}")
            parsed[name] = tuple(float(v) for v in values)  # type: ignore[assignment]
        if not all(isinstance(k, str) for k in keep):
            raise ValueError(f"{label}: {CALIBRATION_KEY} keep_fp32 must list weight names; {fix}")
        clean = {k: float(v) for k, v in check.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return cls(parsed, tuple(keep), clean)

    def require(self, convs: Iterable[str], label: str = "the adapter") -> None:
        """ValueError unless every convolution of the network is either ranged or kept in fp32."""
        missing = sorted(set(convs) - set(self.ranges) - set(self.keep_fp32))
        if missing:
            raise ValueError(f"{label}: its {CALIBRATION_KEY} has no range for {len(missing)} convolution(s) "
                             f"({', '.join(missing[:3])}...); calibrate it again with this core")



def checked_int8(metadata: Mapping[str, str]) -> tuple[bool, str]:
    """Whether an adapter's calibration may run by default (`--precision auto`): only one whose recorded
    check passed the rule (`landmarks calibrate` records it); and why, in words."""
    try:
        calibration = Int8Calibration.from_metadata(metadata)
    except ValueError as exc:
        return False, f"its int8 calibration is malformed ({exc})"
    if calibration is None:
        refused = _refused_check(metadata)
        if refused:
            return False, (f"its int8 calibration was refused by its check ({refused}; the rule is <= "
                           f"{MAX_POINT_ERROR_PX}); landmarks calibrate --keep-fp32 with more modules may pass")
        return False, "no int8 calibration (landmarks calibrate adds one)"
    check = calibration.check
    if not {"mean_px", "p95_px"} <= set(check):
        return False, "its int8 calibration has no recorded check; calibrate it again with landmarks calibrate"
    measured = f"mean {check['mean_px']:.3f} px, p95 {check['p95_px']:.3f} px at 128"
    if not (check["mean_px"] <= MAX_POINT_ERROR_PX and check["p95_px"] <= MAX_POINT_ERROR_PX):
        return False, f"its int8 calibration failed its check ({measured}; the rule is <= {MAX_POINT_ERROR_PX})"
    return True, f"its int8 calibration passed its check ({measured})"


def _refused_check(metadata: Mapping[str, str]) -> str:
    """The recorded refused check in words ('' if there is none or it is unreadable: it only explains)."""
    try:
        check = json.loads(metadata.get(REFUSED_KEY, "") or "null")
        mean, p95 = float(check["mean_px"]), float(check["p95_px"])
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return ""
    return f"mean {mean:.3f} px, p95 {p95:.3f} px at 128" if math.isfinite(mean) and math.isfinite(p95) else ""


def kept_in_fp32(convs: Iterable[str], modules: Iterable[str]) -> tuple[str, ...]:
    """The weight names among `convs` (`architecture.conv_names`) of the convolutions inside any of
    `modules` (names like 'stem', 'head')."""
    prefixes = [m.strip().rstrip(".") for m in modules if m.strip()]
    return tuple(n for n in convs if any(n == f"{p}.weight" or n.startswith(f"{p}.") for p in prefixes))


# ------------------------------------------------------------------------------------ quantisation
_INT8, _UINT8, _INT32, _FLOAT = 3, 2, 6, 1  # onnx.TensorProto data types
_BYTES = {_INT8: 1, _UINT8: 1, _INT32: 4, _FLOAT: 4}


def _q(name: str, part: str) -> str:
    return f"{name}::{part}"


def int8_graph(graph: bytes, quantised: Collection[str]) -> tuple[bytes, list[str]]:
    """`graph` (an exported fp32 graph whose weights are external initializers, as the onnxruntime
    backend makes them) with each convolution whose weight is in `quantised` replaced by
    QuantizeLinear (its input to uint8, per tensor) -> QLinearConv (int8 weights per output channel,
    int32 bias, uint8 output) -> DequantizeLinear (back to fp32 for the batch norms, ReLUs and sums
    between convolutions). Returns the new graph and the names of all its external initializers (what
    `int8_weights` gives values for)."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(graph)
    g = model.graph
    if not any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in model.opset_import):
        raise ValueError("per-channel int8 needs opset 13 or later")
    dims = {t.name: list(t.dims) for t in g.initializer}
    todo = set(quantised)
    nodes: list = []
    replaced: set[str] = set()
    added: list[tuple[str, int, list[int]]] = []
    for node in g.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in todo:
            nodes.append(node)
            continue
        w = node.input[1]
        todo.discard(w)
        out_channels = dims[w][0]
        x_scale, x_zero, y_scale, y_zero = (_q(w, k) for k in ("x_scale", "x_zero", "y_scale", "y_zero"))
        added += [(x_scale, _FLOAT, []), (x_zero, _UINT8, []), (_q(w, "q"), _INT8, dims[w]),
                  (_q(w, "w_scale"), _FLOAT, [out_channels]), (_q(w, "w_zero"), _INT8, [out_channels]),
                  (y_scale, _FLOAT, []), (y_zero, _UINT8, [])]
        replaced.add(w)
        inputs = [_q(w, "xq"), x_scale, x_zero, _q(w, "q"), _q(w, "w_scale"), _q(w, "w_zero"), y_scale, y_zero]
        if len(node.input) > 2 and node.input[2]:
            b = node.input[2]
            added.append((_q(b, "q"), _INT32, [out_channels]))  # its scale is x_scale * w_scale, zero point 0
            replaced.add(b)
            inputs.append(_q(b, "q"))
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        nodes += [onnx.helper.make_node("QuantizeLinear", [node.input[0], x_scale, x_zero], [_q(w, "xq")],
                                        name=_q(w, "xq")),
                  onnx.helper.make_node("QLinearConv", inputs, [_q(w, "yq")], name=_q(w, "conv"), **attributes),
                  onnx.helper.make_node("DequantizeLinear", [_q(w, "yq"), y_scale, y_zero], [node.output[0]],
                                        name=_q(w, "y"))]
    if todo:
        raise ValueError(f"no convolution reads {sorted(todo)[:3]}: the calibration is for another network")
    del g.node[:]
    g.node.extend(nodes)
    kept = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(kept)
    for name, dtype, shape in added:
        tensor = g.initializer.add(name=name, data_type=dtype, dims=shape)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        length = _BYTES[dtype] * int(np.prod(shape, dtype=np.int64))
        for k, value in (("location", "weights"), ("offset", "0"), ("length", str(length))):
            tensor.external_data.add(key=k, value=value)
    return model.SerializeToString(), [t.name for t in g.initializer]


def _activation(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 scale and zero point of a range that includes 0 (ONNX Runtime's asymmetric MinMax)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    if not scale < 3e38:  # float32's largest
        raise ValueError(f"an int8 range of {lo:.3g} .. {hi:.3g} is too wide for a float32 scale; calibrate again")
    zero = int(np.clip(round(-lo / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zero, np.uint8)


def int8_weights(weights: Mapping[str, np.ndarray], calibration: Int8Calibration, names: Iterable[str],
                 reduce_range: bool = False) -> dict[str, np.ndarray]:
    """The values of `int8_graph`'s initializers `names` for one adapter's folded fp32 `weights`:
    fp32 tensors as they are, and for each quantised convolution its int8 weight (symmetric per output
    channel; 7 bits with `reduce_range`, for CPUs without 8-bit dot products), the uint8 scales and
    zero points of its input and output ranges, and its bias (if it has one) in int32."""
    out: dict[str, np.ndarray] = {}
    names = list(names)
    wanted = set(names)
    qmax = 63.0 if reduce_range else 127.0
    for w in calibration.quantised:
        weight = np.asarray(weights[w], np.float32)
        absmax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
        w_scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
        shaped = w_scale.reshape(-1, *([1] * (weight.ndim - 1)))
        out[_q(w, "q")] = np.clip(np.rint(weight / shaped), -qmax, qmax).astype(np.int8)
        out[_q(w, "w_scale")] = w_scale
        out[_q(w, "w_zero")] = np.zeros(weight.shape[0], np.int8)
        in_lo, in_hi, out_lo, out_hi = calibration.ranges[w]
        out[_q(w, "x_scale")], out[_q(w, "x_zero")] = _activation(in_lo, in_hi)
        out[_q(w, "y_scale")], out[_q(w, "y_zero")] = _activation(out_lo, out_hi)
        b = w.removesuffix("weight") + "bias"
        if _q(b, "q") in wanted:
            b_scale = (out[_q(w, "x_scale")] * w_scale).astype(np.float32)
            bias = np.asarray(weights[b], np.float64)
            out[_q(b, "q")] = np.clip(np.rint(bias / b_scale), -2**31, 2**31 - 1).astype(np.int32)
    for name in wanted - set(out):
        out[name] = np.asarray(weights[name])
    return {n: out[n] for n in names}
