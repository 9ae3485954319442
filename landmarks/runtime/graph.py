"""One category's ONNX graph, built from the architecture config with `onnx.helper` (no torch).

The graph: `pixels` (B, S, S, 3) uint8 crops and `boxes` (B, 4) float64, the pixels of the client's
image each crop was cut from (x0, y0, x1, y1, edge coordinates) -> `points` (B, K, 2) float32 in
those pixels and `confidence` (B, K) float32, and (for the server's trial forward) `heatmaps`
(B, K, S/4, S/4). The steps: scale to [0, 1] and normalise, the folded network
(`landmarks.hourglass.LandmarkHourglass`'s layers, `architecture.layers`), the soft-argmax and the
box mapping (`landmarks.runtime.decode`). The batch axis is dynamic; S and K are the adapter's.
Every weight is an initializer named as in the torch network's state dict.

Why built and not traced, nor a template stored with the core: building needs only the config every
core and adapter file already carries, so every existing core serves as it is and no torch is needed
to make one; it takes ~2.3 ms for every preset (`python -m landmarks.runtime.graph` measures it),
against 0.3-0.9 s for tracing with torch.onnx.export (docs/runtime.md); and K and S are plain
parameters, so no dynamic-shape surgery is needed.
The tests compare it with the torch network (tests/landmarks/test_runtime.py).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping

import numpy as np

from landmarks.runtime.architecture import Conv, HourglassConfig, layers, network_shapes
from landmarks.runtime.decode import BETA

__all__ = ["HEATMAPS", "INPUTS", "OPSET", "OUTPUTS", "build", "external_graph", "with_weights"]

OPSET = 17
INPUTS = ("pixels", "boxes")
OUTPUTS = ("points", "confidence")
HEATMAPS = "heatmaps"
BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default


class _Builder:
    def __init__(self, config: HourglassConfig) -> None:
        from onnx import helper

        self.helper = helper
        self.config = config
        self.nodes: list = []
        self.count = 0
        self.convs: dict[str, Conv] = {}
        self.bns: set[str] = set()
        for kind, layer in layers(config):
            if kind == "conv":
                self.convs[layer.path] = layer
            else:
                self.bns.add(layer[0])

    def op(self, op_type: str, inputs: list[str], **attributes) -> str:
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attributes))
        return out

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        self.count += 1
        name = f"const_{self.count}"
        tensor = numpy_helper.from_array(np.asarray(value, dtype), name)
        self.nodes.append(self.helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def conv(self, x: str, path: str) -> str:
        c = self.convs[path]
        pad = c.kernel // 2
        inputs = [x, f"{path}.weight"] + ([f"{path}.bias"] if c.bias else [])
        return self.op("Conv", inputs, kernel_shape=[c.kernel, c.kernel], pads=[pad] * 4, strides=[c.stride] * 2)

    def bn(self, x: str, path: str) -> str:
        names = [f"{path}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        return self.op("BatchNormalization", [x, *names], epsilon=BN_EPSILON)

    def bn_relu_conv(self, x: str, path: str) -> str:  # (BatchNorm .0, ReLU .1, Conv .2)
        return self.conv(self.op("Relu", [self.bn(x, f"{path}.0")]), f"{path}.2")

    def conv_block(self, x: str, path: str) -> str:
        out1 = self.bn_relu_conv(x, f"{path}.branch1")
        out2 = self.bn_relu_conv(out1, f"{path}.branch2")
        out3 = self.bn_relu_conv(out2, f"{path}.branch3")
        residual = self.bn_relu_conv(x, f"{path}.skip") if f"{path}.skip.2" in self.convs else x
        return self.op("Add", [self.op("Concat", [out1, out2, out3], axis=1), residual])

    def pool(self, x: str) -> str:
        return self.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])

    def hourglass(self, x: str, path: str, depth: int) -> str:
        upper = self.conv_block(x, f"{path}.upper")
        lower = self.conv_block(self.pool(x), f"{path}.down")
        inner = f"{path}.inner"
        lower = self.hourglass(lower, inner, depth - 1) if depth > 1 else self.conv_block(lower, inner)
        lower = self.conv_block(lower, f"{path}.up")
        up = self.op("Resize", [lower, "", self.const([1.0, 1.0, 2.0, 2.0])], mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return self.op("Add", [upper, up])

    def network(self, pixels: str) -> str:
        c = self.config
        x = self.op("Transpose", [self.op("Cast", [pixels], to=1)], perm=[0, 3, 1, 2])  # to=1: float
        x = self.op("Div", [x, self.const(255.0)])
        x = self.op("Div", [self.op("Sub", [x, self.const(np.reshape(c.mean, (1, 3, 1, 1)))]),
                            self.const(np.reshape(c.std, (1, 3, 1, 1)))])
        x = self.op("Relu", [self.bn(self.conv(x, "stem.0"), "stem.1")])
        x = self.pool(self.conv_block(x, "block1"))
        x = self.conv_block(self.conv_block(x, "block2"), "block3")
        x = self.conv_block(self.hourglass(x, "hourglass", c.depth), "top")
        x = self.op("Relu", [self.bn(self.conv(x, "top_conv.0"), "top_conv.1")])
        return self.conv(x, "head")

    def decode(self, heatmaps: str, boxes: str) -> tuple[str, str]:
        """`landmarks.runtime.decode.locate_in_boxes`, as nodes."""
        size, side = self.config.input_size, self.config.heatmap_size
        flat = self.op("Reshape", [heatmaps, self.const([0, 0, -1], np.int64)])
        probs = self.op("Softmax", [self.op("Mul", [flat, self.const(BETA)])], axis=-1)
        confidence = self.op("ReduceMax", [probs], axes=[-1], keepdims=0)
        index = np.arange(side * side)
        grid = np.stack((index % side, index // side), axis=-1)
        points = self.op("MatMul", [probs, self.const(grid)])
        stride = size / side
        points = self.op("Sub", [self.op("Mul", [self.op("Add", [points, self.const(0.5)]), self.const(stride)]),
                                 self.const(0.5)])
        axis1 = self.const([1], np.int64)
        low = self.op("Slice", [boxes, self.const([0], np.int64), self.const([2], np.int64), axis1])
        high = self.op("Slice", [boxes, self.const([2], np.int64), self.const([4], np.int64), axis1])
        scale = self.op("Div", [self.op("Sub", [high, low]), self.const(float(size), np.float64)])
        scale = self.op("Unsqueeze", [self.op("Cast", [scale], to=1), axis1])
        origin = self.op("Unsqueeze", [self.op("Cast", [low], to=1), axis1])
        points = self.op("Add", [self.op("Mul", [self.op("Add", [points, self.const(0.5)]), scale]), origin])
        return self.op("Sub", [points, self.const(0.5)]), confidence


def build(config: HourglassConfig, heatmaps: bool = True, opset: int = OPSET):
    """The category graph of `config` (the adapter's: its K and input size) as an onnx.ModelProto whose
    weights are initializers without data (each a float tensor of its shape, named as in the state
    dict): `external_graph` or `with_weights` give them their values."""
    from onnx import TensorProto, helper

    b = _Builder(config)
    maps = b.network("pixels")
    points, confidence = b.decode(maps, "boxes")
    for name, out in (("points", points), ("confidence", confidence), (HEATMAPS, maps)):
        b.nodes.append(helper.make_node("Identity", [out], [name], name=name))
    k, s, h = config.num_landmarks, config.input_size, config.heatmap_size
    outputs = [helper.make_tensor_value_info("points", TensorProto.FLOAT, ["batch", k, 2]),
               helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["batch", k])]
    if heatmaps:
        outputs.append(helper.make_tensor_value_info(HEATMAPS, TensorProto.FLOAT, ["batch", k, h, h]))
    inputs = [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", s, s, 3]),
              helper.make_tensor_value_info("boxes", TensorProto.DOUBLE, ["batch", 4])]
    graph = helper.make_graph(b.nodes, "landmarks", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="landmark-adapters")
    model.ir_version = min(model.ir_version, 8)  # opset 17's IR: readable by older runtimes too
    if not heatmaps:
        kept = [n for n in model.graph.node if n.output[0] != HEATMAPS]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return model


_lock = threading.Lock()


def external_graph(config: HourglassConfig, opset: int = OPSET) -> tuple[bytes, list[str]]:
    """The serialised graph (with `heatmaps`) whose weights are external initializers, and their names in
    order: a runtime given the arrays by name (ONNX Runtime: `SessionOptions.add_external_initializers`)
    treats them as constants without parsing or copying a model of their size. Built once per config."""
    with _lock:
        return _external_graph(config, opset)


@functools.lru_cache(maxsize=32)
def _external_graph(config: HourglassConfig, opset: int) -> tuple[bytes, list[str]]:
    import onnx

    model = build(config, opset=opset)
    names = []
    for name, shape in network_shapes(config).items():
        tensor = model.graph.initializer.add(name=name, data_type=onnx.TensorProto.FLOAT, dims=shape)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "weights"), ("offset", "0"), ("length", str(4 * int(np.prod(shape))))):
            tensor.external_data.add(key=key, value=value)
        names.append(name)
    return model.SerializeToString(), names


def with_weights(config: HourglassConfig, weights: Mapping[str, np.ndarray], heatmaps: bool = False,
                 opset: int = OPSET):
    """A self-contained onnx.ModelProto: the graph with `weights` (float32 by name, e.g. `fold.fold`'s)
    as its initializers."""
    from onnx import numpy_helper

    model = build(config, heatmaps=heatmaps, opset=opset)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(weights[name], np.float32), name)
                                   for name in network_shapes(config))
    return model


if __name__ == "__main__":  # how long building takes, per preset
    import time

    from landmarks.runtime.architecture import ARCHITECTURES

    for preset, make in ARCHITECTURES.items():
        started = time.perf_counter()
        for _ in range(20):
            build(make(10))
        print(f"{preset}: {(time.perf_counter() - started) / 20 * 1e3:.2f} ms per graph")
