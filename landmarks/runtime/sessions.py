"""ONNX Runtime sessions of categories: one per adapter (version), fp32 or int8, on the CPU or CUDA.

`Runtime.prepare` folds an adapter into the core (`fold`) and creates a session of the category's
graph (`graph.external_graph`, built once per K and input size) with the folded weights as its
initializers, handed to ONNX Runtime as arrays (`add_external_initializers`: no model of their
size is built, serialised or parsed per adapter). With constant weights ONNX Runtime folds batch
norms, fuses activations and pre-packs the convolution weights once, at session creation, which is
why a session is made per adapter and not per graph. It runs no warm-up: a session's first run costs
~1 ms more than the next (one CPU arena is shared by all sessions), less than a warm-up forward.

Session options, for a process whose cores are shared with other threads (the server's gRPC
handlers): `threads` intra-op threads, one inter-op thread, sequential execution, and *no spinning*
by default: an ORT worker that spins after its op keeps a core busy that other threads need
(docs/benchmark.md, "Backends"). On the CPU all sessions share one memory arena.

`precision`: fp32; int8 (`int8`: the convolutions but the first and last two in int8, for adapters
calibrated with `landmarks calibrate`; an adapter without a calibration is refused); or auto, the
server's default and `landmarks.Detector`'s: int8 for the adapters that carry a calibration where the
CPU has 8-bit dot products (VNNI, AMX), fp32 for the rest.

`device="cuda[:N]"` (needs `onnxruntime-gpu`) runs the CUDA execution provider, with I/O binding: the
crops and boxes are copied to the device once and the outputs bound to the host.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from landmarks.hardware import cpu_int8_flags
from landmarks.runtime import fold, graph
from landmarks.runtime.architecture import HourglassConfig, conv_names
from landmarks.runtime.int8 import Int8Calibration, checked_int8, int8_graph, int8_weights

__all__ = ["PRECISIONS", "CategoryModel", "Runtime", "blank_crops", "default_threads", "parse_device"]

PRECISIONS = ("auto", "fp32", "int8")

# graph passes skipped at session creation: fusions for transformer and matmul networks that never
# match this one, and general passes that find nothing in it; skipping them cuts ~20% of a session's
# creation (a registration's largest part), the forward unchanged (docs/benchmark.md, "Where a lone
# request's time goes"). ORT ignores names it does not know.
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


class _Core(Protocol):  # landmarks.adapter_io.Core
    config: HourglassConfig
    arrays: dict[str, np.ndarray]


class _Adapter(Protocol):  # landmarks.adapter_io.Adapter
    config: HourglassConfig
    arrays: dict[str, np.ndarray]
    metadata: dict[str, str]
    category: str
    num_landmarks: int


def default_threads() -> int:
    """The physical cores this process may run on (hyper-threads share a core's units: a second
    thread on one slows a convolution more than it helps), as torch and ONNX Runtime choose."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            blocks = fh.read().split("\n\n")
        for block in blocks:
            fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
            fields = {k.strip(): v.strip() for k, v in fields.items()}
            if "processor" in fields and int(fields["processor"]) in allowed:
                cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    except (OSError, ValueError):
        pass
    return max(1, len(cores) or len(allowed))


def parse_device(device: str) -> tuple[str, int]:
    """'cpu', 'cuda' or 'cuda:N' -> ('cpu', 0) / ('cuda', N); ValueError for anything else."""
    text = str(device)
    if text == "cpu":
        return "cpu", 0
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return "cuda", int(text[5:] or 0)
    raise ValueError(f"device {text!r}: ONNX Runtime runs on 'cpu', 'cuda' or 'cuda:N'")


def blank_crops(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`locate`'s inputs for n black size x size crops, each its own whole image (warm-ups, trial runs)."""
    return np.zeros((n, size, size, 3), np.uint8), np.array([[0.0, 0.0, size, size]] * n, np.float64)


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
class CategoryModel:
    """One adapter's session and what feeding it needs."""

    session: Any  # onnxruntime.InferenceSession
    size: int
    num_landmarks: int
    precision: str  # fp32 or int8
    weight_bytes: int
    weights: tuple  # the OrtValues the session's initializers point into: they live as long as it does
    device: str = "cpu"
    device_id: int = 0

    def run(self, pixels: np.ndarray, boxes: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        if pixels.ndim != 4 or pixels.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"crops must be {self.size} x {self.size} x 3, got {tuple(pixels.shape[1:])}")
        feeds = {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8),
                 "boxes": np.ascontiguousarray(boxes, dtype=np.float64)}
        if self.device == "cpu":
            return self.session.run(outputs, feeds)
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id))
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def locate(self, pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 crops and the (B, 4) float64 boxes they were cut from (the client's pixels,
        edge coordinates) -> (B, K, 2) points in those pixels and (B, K) confidences, float32."""
        points, confidence = self.run(pixels, boxes, list(graph.OUTPUTS))
        return points, confidence

    def heatmaps(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 crops -> (B, K, S/4, S/4) raw float32 heatmaps."""
        _, boxes = blank_crops(len(pixels), self.size)
        (maps,) = self.run(pixels, boxes, [graph.HEATMAPS])
        return maps

    @property
    def nbytes(self) -> int:
        """Memory the session holds, roughly (for a cache's budget)."""
        return _NBYTES_FACTOR * self.weight_bytes


class Runtime:
    """Sessions of one core's categories on one device; `prepare(adapter)` makes one (thread-safe)."""

    def __init__(self, core: _Core, device: str = "cpu", threads: int | None = None, spinning: bool = False,
                 precision: str = "auto", share_arena: bool = True) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.core = core
        kind, self.device_id = parse_device(device)
        self.device = "cpu" if kind == "cpu" else f"cuda:{self.device_id}"
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: ONNX Runtime runs fp32 or int8, or auto (int8 where the "
                             "adapter is calibrated and the CPU has 8-bit dot products)")
        if precision == "int8" and kind != "cpu":
            raise ValueError("int8 runs on the CPU (ONNX Runtime's int8 convolutions); on a GPU run fp32")
        self.precision = precision
        # without 8-bit dot products (VNNI, AMX) x86 saturates u8 x s8 products in 16 bits: 7-bit weights
        # there, whose points the calibration's check did not measure, so auto keeps fp32 on such CPUs
        self.reduce_range = not cpu_int8_flags()
        self._auto_int8 = precision == "auto" and kind == "cpu" and not self.reduce_range
        if kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("device cuda needs onnxruntime-gpu (pip install 'landmark-adapters[gpu]'); this "
                                 f"onnxruntime has {', '.join(ort.get_available_providers())}")
            self.providers: list = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.threads = threads or default_threads()
        self.spinning = spinning
        self.share_arena = share_arena
        self._core_weights = fold.float32(core.arrays)  # once: every adapter folds into these
        self._convs = conv_names(core.config)
        self._lock = threading.Lock()
        self._int8_graphs: dict[tuple, tuple[bytes, list[str]]] = {}  # (fp32 graph, quantised convs) -> int8 graph

    def session_options(self):
        ort = self._ort
        options = ort.SessionOptions()
        if self.device == "cpu" and self.share_arena and _shared_cpu_arena(ort):
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

    def precision_for(self, adapter: _Adapter) -> str:
        """int8 with precision int8 (an adapter without a calibration is then refused), or with auto for
        an adapter whose calibration passed its recorded check (`landmarks calibrate`) on a CPU with
        8-bit dot products; else fp32."""
        if self.precision == "int8" or (self._auto_int8 and checked_int8(adapter.metadata)[0]):
            return "int8"
        return "fp32"

    def folded(self, adapter: _Adapter) -> dict[str, np.ndarray]:
        """The adapter folded into the core: float32 weights by name (ValueError if not finite)."""
        return fold.fold(self._core_weights, adapter.arrays)

    def prepare(self, adapter: _Adapter) -> CategoryModel:
        """The adapter's session (ValueError if its folded weights are not finite, or int8 is asked
        for an adapter without a valid calibration)."""
        weights = self.folded(adapter)
        graph_bytes, names = graph.external_graph(adapter.config)
        precision = self.precision_for(adapter)
        if precision == "int8":
            graph_bytes, names, arrays = self._int8(adapter, graph_bytes, weights)
        else:
            arrays = {n: weights[n] for n in names}
        values = tuple(self._ort.OrtValue.ortvalue_from_numpy(arrays[n]) for n in names)
        options = self.session_options()
        options.add_external_initializers(list(names), list(values))
        session = self._ort.InferenceSession(graph_bytes, options, providers=self.providers,
                                             disabled_optimizers=list(SKIPPED_OPTIMIZERS))
        return CategoryModel(session, adapter.config.input_size, adapter.num_landmarks, precision,
                             sum(a.nbytes for a in arrays.values()), values, self.device.split(":")[0],
                             self.device_id)

    def _int8(self, adapter: _Adapter, graph_bytes: bytes, weights: dict) -> tuple[bytes, list[str], dict]:
        """The int8 graph and its initializers' values for an adapter calibrated for int8 (`int8`)."""
        label = f"adapter {adapter.category!r}"
        calibration = Int8Calibration.from_metadata(adapter.metadata, label)
        if calibration is None:
            raise ValueError(f"{label} has no int8 calibration, which precision int8 needs: add one with "
                             "`landmarks calibrate ADAPTER --images FORMAT:PATH` (it checks the points against fp32 "
                             "on held-out images), or run fp32")
        calibration.require(self._convs, label)
        key = (graph_bytes, calibration.quantised)
        with self._lock:
            if key not in self._int8_graphs:
                if len(self._int8_graphs) >= _MAX_INT8_GRAPHS:  # one per K and kept-in-fp32 choice: a few
                    self._int8_graphs.pop(next(iter(self._int8_graphs)))
                self._int8_graphs[key] = int8_graph(graph_bytes, calibration.quantised)
            qgraph, names = self._int8_graphs[key]
        return qgraph, names, int8_weights(weights, calibration, names, reduce_range=self.reduce_range)
