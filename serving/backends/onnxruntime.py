"""ONNX Runtime backend: one inference session per folded adapter version.

`prepare` folds the adapter into the core and creates a session of the architecture's exported
graph (`landmarks.onnx_export`: traced once per input size) with the folded weights as its
initializers, handed to ONNX Runtime as tensors (`add_external_initializers`: no model of their
size is built, serialised or parsed per adapter). With constant weights ONNX Runtime folds batch norms, fuses
activations and pre-packs the convolution weights once, at session creation, which is why a
session is made per version and not per graph. `prepare` runs at registration (the trial forward)
or on a cache miss, never inside a client's request otherwise. It runs no warm-up: a session's
first run costs ~1 ms more than the next (one CPU arena is shared by all sessions), less than a
warm-up forward costs, and at registration the trial forward is that first run.

The session's graph is the one `landmarks export` writes (uint8 crops and boxes in, points in the
boxes' pixels and confidences out), plus the heatmaps the trial forward checks.

Session options, for a server whose cores are shared with gRPC threads: `threads` intra-op threads
(the server passes its compute threads shared among its batch workers), one inter-op thread,
sequential execution, and *no spinning*: an ORT worker that spins after its op keeps a core busy
that the gRPC threads need for the next request (docs/benchmark.md, "Backends"). Each session owns
its thread pool (its threads sleep when idle); on the CPU all sessions share one memory arena.

`precision`: fp32; int8 (`landmarks.int8`: the convolutions but the first and last two in int8, for
adapters calibrated with `landmarks calibrate`; a registration without a calibration fails); or
auto, the server's default: int8 for the adapters that carry a calibration where the CPU has 8-bit
dot products (VNNI, AMX), fp32 for the rest.

`--device cuda[:N]` (needs `onnxruntime-gpu`, the `gpu` extra) runs the CUDA execution provider,
with I/O binding: the crops and boxes are copied to the device once and the outputs bound to the
host, so ORT never guesses where they live.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from landmarks.adapter_io import Adapter, Core
from landmarks.hardware import cpu_int8_flags
from landmarks.images import images_to_pixels
from landmarks.int8 import Int8Calibration, checked_int8, conv_names, int8_graph, int8_weights
from landmarks.onnx_export import HEATMAPS, OUTPUTS, folded_weights, template_for
from serving.backends import blank_crops

__all__ = ["OnnxRuntimeBackend", "OrtModel"]

# graph passes skipped at session creation: fusions for transformer and matmul networks that never
# match this one, and general passes that find nothing in it; skipping them cuts ~20% of a session's
# creation (a registration's largest part), the forward unchanged (docs/benchmark.md, "Issue 16,
# session 13"). ORT ignores names it does not know.
SKIPPED_OPTIMIZERS = (
    "CommonSubexpressionElimination", "ConstantSharing", "TransposeOptimizer", "ReshapeFusion",
    "GatherSliceToSplitFusion", "GatherToSplitFusion", "GatherToSliceFusion", "GeluFusion", "FastGeluFusion",
    "QuickGeluFusion", "BiasGeluFusion", "LayerNormFusion", "SimplifiedLayerNormFusion", "SkipLayerNormFusion",
    "EmbedLayerNormFusion", "AttentionFusion", "RotaryEmbeddingFusion", "GroupQueryAttentionFusion",
    "BiasSoftmaxFusion", "MatMulScaleFusion", "MatMulActivationFusion", "MatmulTransposeFusion", "MatMulAddFusion",
    "GemmActivationFusion", "MatMulIntegerToFloatFusion", "DynamicQuantizeMatMulFusion", "MatMulNBitsFusion",
)

_MAX_INT8_GRAPHS = 16  # int8 graphs kept for reuse (adapters choosing odd fp32 sets cannot grow it without bound)
_NBYTES_FACTOR = 3  # a session holds ~3x its weights: initializers, pre-packed copies, its arena (docs/benchmark.md)


_ARENA_LOCK = threading.Lock()
_ARENA: list[bool] = []  # [] until tried, then [whether the process-wide CPU arena is registered]


def _shared_cpu_arena(ort) -> bool:
    """Register one CPU arena with ORT's environment, once per process (sessions opt in)."""
    with _ARENA_LOCK:
        if not _ARENA:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
                _ARENA.append(True)
            except (AttributeError, RuntimeError):  # an ORT build without it: each session keeps its own arena
                _ARENA.append(False)
        return _ARENA[0]


@dataclass(frozen=True)
class OrtModel:
    """One adapter version: its session and what the engine needs to feed it."""

    session: Any  # onnxruntime.InferenceSession
    size: int
    num_landmarks: int
    weight_bytes: int
    weights: tuple  # the OrtValues the session's initializers point into: they live as long as it does


class OnnxRuntimeBackend:
    name = "onnxruntime"
    def __init__(self, core: Core, device: str = "cpu", threads: int | None = None, spinning: bool = False,
                 precision: str = "fp32") -> None:
        import onnxruntime as ort

        from serving.threads import DEFAULT_COMPUTE_THREADS

        self._ort = ort
        self.core = core
        dev = torch.device(device)
        self.device = str(dev)
        if precision not in ("auto", "fp32", "int8"):
            raise ValueError(f"precision {precision!r}: the onnxruntime backend runs fp32 or int8, or auto (bf16: "
                             "--backend torchscript or eager)")
        if precision == "int8" and dev.type != "cpu":
            raise ValueError("--precision int8 runs on the CPU (ONNX Runtime's int8 convolutions); on a GPU serve fp32")
        self.precision = precision
        # without 8-bit dot products (VNNI, AMX) x86 saturates u8 x s8 products in 16 bits: 7-bit weights
        # there, whose points the calibration's check did not measure, so auto keeps fp32 on such CPUs
        self.reduce_range = not cpu_int8_flags()
        self._auto_int8 = precision == "auto" and dev.type == "cpu" and not self.reduce_range
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("--device cuda with --backend onnxruntime needs onnxruntime-gpu "
                                 "(pip install 'landmark-adapters[gpu]'); this onnxruntime has "
                                 f"{', '.join(ort.get_available_providers())}")
            self._device_id = dev.index or 0
            self.providers = [("CUDAExecutionProvider", {"device_id": self._device_id}), "CPUExecutionProvider"]
        elif dev.type == "cpu":
            self.providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"--backend onnxruntime runs on cpu or cuda, not {device!r}")
        self.threads = threads or DEFAULT_COMPUTE_THREADS
        self.spinning = spinning
        self._core_model = core.build("cpu")
        self._lock = threading.Lock()  # fold reads the shared core module's state
        self._convs = conv_names(self._core_model)
        self._int8_graphs: dict[tuple, tuple[bytes, list[str]]] = {}  # (fp32 graph, quantised convs) -> int8 graph

    def session_options(self):
        ort = self._ort
        options = ort.SessionOptions()
        if self.device == "cpu" and _shared_cpu_arena(ort):
            # every session's activations in one arena: with 16 categories in rotation the next session
            # finds its buffers warm in the cache (+6-10% crops/s, docs/benchmark.md), and memory is one
            # arena, not one per version
            options.add_session_config_entry("session.use_env_allocators", "1")
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if self.spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.log_severity_level = 3  # warnings about unused initializers etc. are not the operator's business
        return options

    def prepare(self, adapter: Adapter) -> OrtModel:
        size = adapter.config.input_size
        with self._lock:
            weights = folded_weights(self._core_model, adapter)  # ValueError if not finite
        graph, names = template_for(self.core.config, size).with_external_weights(weights)
        if self.precision_for(adapter) == "int8":
            graph, names, arrays = self._int8(adapter, graph, weights)
        else:
            arrays = {n: weights[n].numpy() for n in names}
        values = tuple(self._ort.OrtValue.ortvalue_from_numpy(arrays[n]) for n in names)
        options = self.session_options()
        options.add_external_initializers(list(names), list(values))
        session = self._ort.InferenceSession(graph, options, providers=self.providers,
                                             disabled_optimizers=list(SKIPPED_OPTIMIZERS))
        return OrtModel(session, size, adapter.num_landmarks, sum(a.nbytes for a in arrays.values()), values)

    def _int8(self, adapter: Adapter, graph: bytes, weights: dict) -> tuple[bytes, list[str], dict]:
        """The int8 graph and its initializers' values for an adapter calibrated for int8 (`landmarks.int8`)."""
        label = f"adapter {adapter.category!r}"
        calibration = Int8Calibration.from_metadata(adapter.metadata, label)
        if calibration is None:
            raise ValueError(f"{label} has no int8 calibration, which --precision int8 needs: add one with "
                             "`landmarks calibrate ADAPTER --images FORMAT:PATH` (it checks the points against fp32 "
                             "on held-out images), or serve --precision fp32")
        calibration.require(self._convs, label)
        key = (graph, calibration.quantised)
        with self._lock:
            if key not in self._int8_graphs:
                if len(self._int8_graphs) >= _MAX_INT8_GRAPHS:  # one per K and kept-in-fp32 choice: a few
                    self._int8_graphs.pop(next(iter(self._int8_graphs)))
                self._int8_graphs[key] = int8_graph(graph, calibration.quantised)
            qgraph, names = self._int8_graphs[key]
        return qgraph, names, int8_weights(weights, calibration, names, reduce_range=self.reduce_range)

    def _run(self, prepared: OrtModel, pixels: np.ndarray, boxes: np.ndarray, outputs: list[str]) -> list:
        feeds = {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8),
                 "boxes": np.ascontiguousarray(boxes, dtype=np.float64)}
        if self.device == "cpu":
            return prepared.session.run(outputs, feeds)
        binding = prepared.session.io_binding()
        for name, array in feeds.items():
            value = self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self._device_id)
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        prepared.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def locate(self, prepared: OrtModel, pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if pixels.shape[1:] != (prepared.size, prepared.size, 3):
            raise ValueError(f"crops must be {prepared.size} x {prepared.size} x 3, got {tuple(pixels.shape[1:])}")
        points, confidence = self._run(prepared, pixels, boxes, list(OUTPUTS))
        return points, confidence

    def run(self, prepared: OrtModel, images: torch.Tensor) -> torch.Tensor:
        """Heatmaps of float images, which the graph takes as 8-bit pixels (rounded)."""
        _, boxes = blank_crops(images.shape[0], prepared.size)
        pixels = images_to_pixels(images)
        (heatmaps,) = self._run(prepared, pixels, boxes, [HEATMAPS])
        return torch.from_numpy(heatmaps)

    def precision_for(self, adapter: Adapter) -> str:
        """int8 with --precision int8 (an adapter without a calibration then fails its registration), or
        with auto for an adapter whose calibration passed its check (`landmarks calibrate`) on a CPU
        with 8-bit dot products; fp32 otherwise."""
        if self.precision == "int8" or (self._auto_int8 and checked_int8(adapter.metadata)[0]):
            return "int8"
        return "fp32"

    def nbytes(self, prepared: OrtModel) -> int:
        return _NBYTES_FACTOR * prepared.weight_bytes
