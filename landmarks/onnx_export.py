"""One category (core + adapter, folded) as an ONNX graph that any ONNX Runtime client can run.

The graph: `pixels` (B, S, S, 3) uint8 crops and `boxes` (B, 4) float64, the pixels of the client's
image each crop was cut from (x0, y0, x1, y1, edge coordinates) -> `points` (B, K, 2) float32 in
those pixels and `confidence` (B, K) float32: the same steps as the server's backends (scale to
[0, 1], the folded network, `landmarks.heatmaps.locate`, `landmarks.geometry.input_to_original`).
The batch axis is dynamic; S is fixed (the adapter's input size).

Exporting (tracing, `torch.onnx.export`) takes seconds, so it is done once per architecture and
input size (`GraphTemplate`): the template's graph takes every folded weight as an input; `with_weights`
turns those inputs into initializers holding one adapter's folded tensors, which takes
milliseconds. A runtime then sees constant weights and can fuse and pre-pack them. The template
also outputs `heatmaps` (B, K, S/4, S/4), which the server's trial forward checks; `export_adapter`
drops that output from the file it writes.

Needs `onnx` (and torch); nothing here imports onnxruntime or the server.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from dataclasses import dataclass, field

import torch

from landmarks.adapter_io import Adapter, Core
from landmarks.hourglass import HourglassConfig, LandmarkHourglass
from landmarks.images import locate_in_boxes, pixels_to_images
from landmarks.projection import fold_state_dict
from landmarks.weight_slots import WeightSlots

__all__ = ["HEATMAPS", "INPUTS", "OPSET", "OUTPUTS", "GraphTemplate", "export_adapter", "folded_weights", "metadata",
           "template_for"]

OPSET = 17
INPUTS = ("pixels", "boxes")
OUTPUTS = ("points", "confidence")
HEATMAPS = "heatmaps"


class _LocateGraph(torch.nn.Module):
    """forward(pixels, boxes, *weights): the network with its parameters and buffers (in `names`
    order) replaced by `weights` for the call; traced, the weights become graph inputs."""

    def __init__(self, model: torch.nn.Module, names: list[str], size: int) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self._weights = WeightSlots(model, names)

    def forward(self, pixels: torch.Tensor, boxes: torch.Tensor, *weights: torch.Tensor):
        with self._weights.holding(weights):
            heatmaps = self.model(pixels_to_images(pixels))
            points, confidence = locate_in_boxes(heatmaps, boxes, self.size)
        return points, confidence, heatmaps


def _weight_names(model: LandmarkHourglass) -> list[str]:
    # float tensors only: num_batches_tracked is unused in eval mode
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]


def folded_weights(core_model: LandmarkHourglass, adapter: Adapter) -> dict[str, torch.Tensor]:
    """The adapter folded into the core (`landmarks.projection.fold_state_dict`), as float32 tensors
    by name, with the core's input normalisation; no module is built (raises ValueError if folding
    produced non-finite weights)."""
    state = fold_state_dict(core_model.state_dict(), adapter.tensors)
    state.update(pixel_mean=core_model.pixel_mean, pixel_std=core_model.pixel_std)
    return {n: t.detach().float().contiguous() for n, t in state.items() if t.is_floating_point()}


@dataclass
class GraphTemplate:
    """The traced graph of one architecture at one input size, every folded weight an input."""

    size: int
    names: list[str]   # weight inputs, in order
    proto: bytes       # serialised onnx.ModelProto
    _external: dict[tuple, tuple[bytes, list[str]]] = field(default_factory=dict)  # by the dynamic weight shapes

    def with_external_weights(self, weights: dict[str, torch.Tensor]) -> tuple[bytes, list[str]]:
        """The graph with every weight it reads an initializer of `weights`' shape whose data lies
        outside the model, and those initializers' names: a runtime given the tensors by name (ONNX
        Runtime: `SessionOptions.add_external_initializers`) treats them as constants without
        parsing or copying a model of their size. Made once per K (the head's shape)."""
        import onnx

        model = onnx.ModelProto()
        model.ParseFromString(self.proto)
        graph = model.graph
        dynamic = [i.name for i in graph.input
                   if i.name not in INPUTS and any(d.dim_param for d in i.type.tensor_type.shape.dim)]
        key = tuple(tuple(weights[n].shape) for n in dynamic)
        if key not in self._external:
            present = {i.name for i in graph.input}
            names = [n for n in self.names if n in present]
            inputs = [i for i in graph.input if i.name in INPUTS]
            del graph.input[:]
            graph.input.extend(inputs)
            for name in names:
                tensor = graph.initializer.add(name=name, data_type=onnx.TensorProto.FLOAT, dims=weights[name].shape)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for k, value in (("location", "weights"), ("offset", "0"), ("length", str(4 * weights[name].numel()))):
                    tensor.external_data.add(key=k, value=value)
            self._external[key] = (model.SerializeToString(), names)
        return self._external[key]

    def with_weights(self, weights: dict[str, torch.Tensor], keep_heatmaps: bool = True):
        """An onnx.ModelProto whose weight inputs are initializers holding `weights` (self-contained)."""
        import onnx
        from onnx import numpy_helper

        model = onnx.ModelProto()
        model.ParseFromString(self.proto)
        graph = model.graph
        inputs = [i for i in graph.input if i.name in INPUTS]
        wanted = {i.name for i in graph.input} - set(INPUTS)  # the exporter drops inputs the graph never reads
        del graph.input[:]
        graph.input.extend(inputs)
        graph.initializer.extend(numpy_helper.from_array(weights[n].numpy(), n) for n in self.names if n in wanted)
        if not keep_heatmaps:
            kept = [o for o in graph.output if o.name != HEATMAPS]
            del graph.output[:]
            graph.output.extend(kept)
        return model


_templates: dict[tuple[str, int], GraphTemplate] = {}
_templates_lock = threading.Lock()


def template_for(config: HourglassConfig, size: int, opset: int = OPSET) -> GraphTemplate:
    """The template of `config`'s architecture at `size` px (traced once per process; K is a
    dynamic axis of the head's weight, so adapters of any K share it)."""
    key = (config.replace(num_landmarks=1, input_size=size).to_json() + f"/{opset}", size)
    with _templates_lock:
        if key not in _templates:
            _templates[key] = _trace(config.replace(input_size=size), size, opset)
        return _templates[key]


def _trace(config: HourglassConfig, size: int, opset: int) -> GraphTemplate:
    model = LandmarkHourglass(config).eval().requires_grad_(False)
    names = _weight_names(model)
    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    weights = tuple(tensors[n].detach() for n in names)
    pixels = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, size, size]] * 2, dtype=torch.float64)
    head = [n for n in names if n.startswith("head.")]
    dynamic = {"pixels": {0: "batch"}, "boxes": {0: "batch"}, "points": {0: "batch", 1: "K"},
               "confidence": {0: "batch", 1: "K"}, HEATMAPS: {0: "batch", 1: "K"}}
    dynamic.update({n: {0: "K"} for n in head})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's and the legacy exporter's notices
        torch.onnx.export(_LocateGraph(model, names, size), (pixels, boxes, *weights), buffer,
                          input_names=[*INPUTS, *names], output_names=[*OUTPUTS, HEATMAPS], dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    return GraphTemplate(size, names, buffer.getvalue())


def metadata(core: Core, adapter: Adapter, opset: int = OPSET) -> dict[str, str]:
    """What the exported file says about itself (ONNX metadata_props, all strings)."""
    size = adapter.config.input_size
    return {
        "category": adapter.category,
        "num_landmarks": str(adapter.num_landmarks),
        "landmark_names": json.dumps(adapter.landmark_names),
        "input_size": str(size),
        "core_sha256": core.sha256,
        "adapter_sha256": adapter.sha256,
        "opset": str(opset),
        "inputs": f"pixels: (B, {size}, {size}, 3) uint8 RGB crops; boxes: (B, 4) float64, the x0, y0, x1, y1 "
                  "each crop was cut from, in the original image's pixels (edges)",
        "outputs": "points: (B, K, 2) float32 x, y in the original image's pixels (pixel centres at integers); "
                   "confidence: (B, K) float32, the peak of each landmark's spatial softmax",
        "producer": "landmark-adapters (landmarks export)",
    }


def export_adapter(core: Core, adapter: Adapter, opset: int = OPSET):
    """core + adapter -> a checked, self-contained onnx.ModelProto (points and confidences only)."""
    import onnx

    template = template_for(core.config, adapter.config.input_size, opset)
    model = template.with_weights(folded_weights(core.build(), adapter), keep_heatmaps=False)
    model.doc_string = f"landmarks of category {adapter.category!r} (K={adapter.num_landmarks})"
    for key, value in metadata(core, adapter, opset).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model
