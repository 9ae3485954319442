"""The PyTorch backends, both on folded weights (`landmarks.projection.fold`: the adapter's
projections multiplied into the core's conv weights once, so nothing is projected per forward):
- `TorchScriptBackend` (`--backend torchscript`): one TorchScript graph of the architecture, traced
  once, run on each adapter's folded tensors; the whole forward runs in C++ *without holding
  Python's GIL* and without Python's per-op cost. The GIL matters in a server: an eager forward
  re-takes the GIL for every op, and while gRPC handler threads decode requests it waits for them
  op after op; `scripts/serving_speed.py backends` measures both, idle and next to a Python thread.
- `EagerBackend` (`--backend eager`): the folded `LandmarkHourglass` run eagerly, the reference
  for the others (tests check that they agree).

`precision="bf16"` (`--precision bf16`) casts the folded weights and the images to bfloat16; heatmaps
and points stay fp32. It pays where the CPU has native BF16 (AVX-512 BF16, AMX: a forward of 8 crops
at 128 px ran ~2.7x faster on one core of a Sapphire Rapids than in fp32) and moves points by ~0.05 px
at 128 on average (docs/benchmark.md, `scripts/bf16_accuracy.py`).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from landmarks.adapter_io import Adapter, Core
from landmarks.hourglass import LandmarkHourglass
from landmarks.images import locate_in_boxes as _locate_in_boxes
from landmarks.images import pixels_to_images  # shared with landmarks.Detector
from landmarks.projection import fold
from landmarks.weight_slots import WeightSlots
from serving.backends import blank_crops

__all__ = ["DTYPES", "EagerBackend", "ScriptedModel", "TorchScriptBackend"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # serving.backends.PRECISIONS but int8 (onnxruntime only)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class EagerBackend:
    """Folded weights, one plain network per adapter version, run eagerly.

    `channels_last` runs convolutions on NHWC activations (oneDNN's preferred layout on CPU);
    `scripts/training_speed.py core` measures both layouts on the machine at hand.
    """

    name = "eager"

    def __init__(self, core: Core, device: str = "cpu", channels_last: bool = True, precision: str = "fp32") -> None:
        precision = "fp32" if precision == "auto" else precision  # int8 is onnxruntime's
        if precision not in DTYPES:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(DTYPES)}")
        self.precision, self.dtype = precision, DTYPES[precision]
        self.device = str(torch.device(device))
        self.core = core
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._core_model: LandmarkHourglass = core.build(self.device)
        self._lock = threading.Lock()

    def prepare(self, adapter: Adapter) -> Any:
        with self._lock:  # fold reads the shared core module's state
            model = fold(self._core_model, adapter.tensors, adapter.config)
        return model.eval().requires_grad_(False).to(dtype=self.dtype, memory_format=self.memory_format)

    def _forward(self, prepared: Any, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = prepared(images.to(self.device, self.dtype, non_blocking=True, memory_format=self.memory_format))
        return out.float().cpu()

    def run(self, prepared: Any, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return self._forward(prepared, torch.as_tensor(images)).numpy()

    def locate(self, prepared: Any, pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            heatmaps = self._forward(prepared, pixels_to_images(torch.from_numpy(pixels).to(self.device)))
            points, confidence = _locate_in_boxes(heatmaps, torch.from_numpy(boxes).to(self.device), pixels.shape[1])
        return points.float().cpu().numpy(), confidence.float().cpu().numpy()

    def nbytes(self, prepared: Any) -> int:
        return _nbytes(list(prepared.parameters()) + list(prepared.buffers()))

    def precision_for(self, adapter: Adapter) -> str:
        return self.precision


@dataclass(frozen=True)
class ScriptedModel:
    """One adapter version for `TorchScriptBackend`: the shared traced graphs and this version's tensors."""

    graph: torch.jit.ScriptModule  # images, tensors -> heatmaps
    locator: torch.jit.ScriptModule  # uint8 crops of `size` px, tensors, boxes -> (points, confidences)
    size: int
    tensors: tuple[torch.Tensor, ...]  # folded parameters and buffers, in the graphs' input order

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.graph(images, self.tensors)


class _WeightsAsInputs(torch.nn.Module):
    """`forward(images, tensors)` = `model(images)` with the model's parameters and buffers (in `names`
    order) replaced by `tensors` for the call: traced, it gives a graph with the weights as inputs.
    With `locate_size`, `forward(pixels, tensors, boxes)` takes uint8 crops of that size and returns
    the points found in their heatmaps, in the pixels of the (B, 4) boxes they were cut from, and
    their confidences (`Backend.locate`)."""

    def __init__(self, model: torch.nn.Module, names: list[str], locate_size: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.locate_size = locate_size
        self.dtype = dtype
        self._weights = WeightSlots(model, names)

    def forward(self, images: torch.Tensor, tensors: tuple[torch.Tensor, ...], boxes: torch.Tensor | None = None):
        with self._weights.holding(tensors):
            if boxes is None:
                return self.model(images)
            heatmaps = self.model(pixels_to_images(images).to(self.dtype)).float()
            return _locate_in_boxes(heatmaps, boxes, self.locate_size)


class TorchScriptBackend(EagerBackend):
    """Folded weights run by one TorchScript graph, traced once, that takes the weights as inputs.

    The graph is traced from the core's architecture with every parameter and buffer an input, so
    an adapter version is only its tuple of folded tensors, and registering or evicting one creates
    or frees no TorchScript object: tracing a module per adapter kept ~20 MB per registration alive
    for ever (TorchScript's global compilation state), which `tests/serving/test_lifecycle.py`'s
    register/unregister cycles caught. The graph has no shape-dependent Python (pooling and
    upsampling are by factors), so it serves every batch size, input size and K. `locate` runs a
    second graph per input size that also finds the points (soft-argmax, whose pixel grid is a
    constant of the trace) and maps them into each request's box: in eager torch those 20-odd small
    ops cost ~0.4 ms per call, ~1.2 ms on a server woken from idle, mostly Python dispatch. Each graph's first two calls
    let TorchScript's profiling executor optimise it; `prepare` makes them (at registration or on a
    cache miss, never on a client's request) for the first adapter of each input size and K only:
    the optimised graph is shared, so later adapters of that shape need no warm-up of their own
    (each warm-up call is a forward pass). TorchScript is deprecated upstream in favour of
    `torch.compile` / `torch.export`, which on CPU need a C++ toolchain at run time; this backend
    sits behind the `Backend` seam so that it can be replaced without touching the server.
    """

    name = "torchscript"
    WARMUP_CALLS = 2

    def __init__(self, core: Core, device: str = "cpu", channels_last: bool = True, precision: str = "fp32") -> None:
        super().__init__(core, device, channels_last, precision)
        # the traced graphs' template: the core module `fold` reads (both only under the lock)
        self._template = self._core_model.eval().requires_grad_(False)
        self._names = [n for n, _ in self._template.named_parameters()] + [n for n, _ in self._template.named_buffers()]
        self._graph: torch.jit.ScriptModule | None = None
        self._locators: dict[int, torch.jit.ScriptModule] = {}  # by input size
        self._warm: set[tuple[int, int]] = set()  # (input size, K) whose graphs have run WARMUP_CALLS times

    def _state(self, model: LandmarkHourglass) -> tuple[torch.Tensor, ...]:
        tensors = dict(model.named_parameters())
        tensors.update(model.named_buffers())
        return tuple(tensors[n].detach() for n in self._names)

    def _trace(self, example: torch.Tensor, state: tuple[torch.Tensor, ...],
               locate_size: int | None = None) -> torch.jit.ScriptModule:
        """(Under the lock.) Trace the template's forward with its tensors swapped for graph inputs
        (with `locate_size`: uint8 crops of that size and boxes as inputs, see `_WeightsAsInputs`)."""
        module = _WeightsAsInputs(self._template, self._names, locate_size, self.dtype)
        if locate_size is None:
            inputs = (example, state)
        else:
            pixels, boxes = (torch.from_numpy(a).to(self.device) for a in blank_crops(1, locate_size))
            inputs = (pixels, state, boxes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice, and the tracer's own warnings
            # a traced *module*, not a traced function: calling a ScriptFunction kept the GIL for the
            # whole forward on torch 2.14 (scripts/serving_speed.py backends), a ScriptModule's method does not
            return torch.jit.trace(module, inputs, check_trace=False)

    def prepare(self, adapter: Adapter) -> ScriptedModel:
        model = super().prepare(adapter)
        state = self._state(model)
        size = adapter.config.input_size
        example = torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype).contiguous(
            memory_format=self.memory_format)
        shape = (size, adapter.num_landmarks)
        with self._lock:
            if self._graph is None:
                self._graph = self._trace(example, state)
            if size not in self._locators:
                self._locators[size] = self._trace(example, state, locate_size=size)
            warm = shape in self._warm
        scripted = ScriptedModel(self._graph, self._locators[size], size, state)
        if not warm:
            pixels, boxes = blank_crops(1, size)
            for _ in range(self.WARMUP_CALLS):
                self._forward(scripted, example)
                self.locate(scripted, pixels, boxes)
            with self._lock:
                self._warm.add(shape)
        return scripted

    def locate(self, prepared: ScriptedModel, pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if pixels.shape[1] != prepared.size:
            return super().locate(prepared, pixels, boxes)
        with torch.inference_mode():
            points, confidence = prepared.locator(torch.from_numpy(pixels).to(self.device), prepared.tensors,
                                                  torch.from_numpy(boxes).to(self.device))
        return points.float().cpu().numpy(), confidence.float().cpu().numpy()

    def nbytes(self, prepared: ScriptedModel) -> int:
        return _nbytes(prepared.tensors)
