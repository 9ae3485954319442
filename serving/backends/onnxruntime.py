"""ONNX Runtime backend, the default: one session per folded adapter version, made by the inference
runtime (`landmarks.runtime.sessions.Runtime`: the numpy fold, the category's ONNX graph, fp32 or int8,
CPU or CUDA). This module adds only what the server's `Backend` protocol asks for; it imports no torch.

`prepare` runs at registration (the trial forward) or on a cache miss, never inside a client's request
otherwise. The server passes its compute threads shared among its batch workers as `threads`, and
`precision` from `--precision` (auto, its default: int8 for calibrated adapters on CPUs with 8-bit
dot products, fp32 for the rest; docs/benchmark.md).
"""

from __future__ import annotations

import numpy as np

from landmarks.adapter_io import Adapter, Core
from landmarks.runtime.crops import images_to_pixels
from landmarks.runtime.sessions import CategoryModel, Runtime

__all__ = ["OnnxRuntimeBackend", "OrtModel"]

OrtModel = CategoryModel  # one adapter version's session


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, core: Core, device: str = "cpu", threads: int | None = None, spinning: bool = False,
                 precision: str = "fp32") -> None:
        from serving.threads import DEFAULT_COMPUTE_THREADS

        if precision not in ("auto", "fp32", "int8"):
            raise ValueError(f"precision {precision!r}: the onnxruntime backend runs fp32 or int8, or auto (bf16: "
                             "--backend torchscript or eager)")
        if precision == "int8" and str(device) != "cpu":
            raise ValueError("--precision int8 runs on the CPU (ONNX Runtime's int8 convolutions); on a GPU serve fp32")
        try:
            self.runtime = Runtime(core, device, threads or DEFAULT_COMPUTE_THREADS, spinning, precision)
        except ValueError as exc:
            raise ValueError(f"--backend onnxruntime: {exc}") from None
        self.core = core
        self.device = self.runtime.device
        self.precision = precision
        self.threads = self.runtime.threads
        self.spinning = spinning
        self.reduce_range = self.runtime.reduce_range

    def session_options(self):
        return self.runtime.session_options()

    def prepare(self, adapter: Adapter) -> CategoryModel:
        return self.runtime.prepare(adapter)

    def locate(self, prepared: CategoryModel, pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return prepared.locate(pixels, boxes)

    def run(self, prepared: CategoryModel, images: np.ndarray) -> np.ndarray:
        """Heatmaps of (B, 3, S, S) float images in [0, 1], which the graph takes as 8-bit pixels (rounded)."""
        return prepared.heatmaps(images_to_pixels(np.asarray(images)))

    def precision_for(self, adapter: Adapter) -> str:
        return self.runtime.precision_for(adapter)

    def nbytes(self, prepared: CategoryModel) -> int:
        return prepared.nbytes
