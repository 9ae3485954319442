"""The compute seam: turn (core, adapter) into something runnable, and run it on a batch.

`TorchFoldedBackend` folds the adapter's projections into the core's conv weights
(`landmarks.projection.fold`), so serving runs a plain `LandmarkHourglass` in eval mode
under `torch.inference_mode`. Another backend (ONNX Runtime, a mixed-category unfolded
path, TensorRT) implements the same three methods; a batching queue (issue 6) sits between
the servicer and `Backend.run`.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import torch

from landmarks.adapter_io import Adapter, Core
from landmarks.hourglass import LandmarkHourglass
from landmarks.projection import fold

__all__ = ["Backend", "TorchFoldedBackend"]


class Backend(Protocol):
    name: str
    device: str

    def prepare(self, adapter: Adapter) -> Any:
        """A runnable model for this adapter on the backend's device (may raise ValueError)."""

    def run(self, prepared: Any, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float images in [0, 1] (CPU) -> (B, K, S/4, S/4) float32 heatmaps (CPU)."""

    def nbytes(self, prepared: Any) -> int:
        """Memory the prepared model holds (for the cache budget)."""


class TorchFoldedBackend:
    """Folded weights, one plain network per adapter version.

    `channels_last` runs convolutions on NHWC activations (oneDNN's preferred layout on CPU);
    `scripts/speed.py` measures both layouts on the machine at hand.
    """

    name = "torch-folded"

    def __init__(self, core: Core, device: str = "cpu", channels_last: bool = True) -> None:
        self.device = str(torch.device(device))
        self.core = core
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._core_model: LandmarkHourglass = core.build(self.device)
        self._lock = threading.Lock()

    def prepare(self, adapter: Adapter) -> LandmarkHourglass:
        with self._lock:  # fold reads the shared core module's state
            model = fold(self._core_model, adapter.tensors, adapter.config)
        return model.eval().requires_grad_(False).to(memory_format=self.memory_format)

    def run(self, prepared: LandmarkHourglass, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = prepared(images.to(self.device, non_blocking=True, memory_format=self.memory_format))
        return out.float().cpu()

    def nbytes(self, prepared: LandmarkHourglass) -> int:
        return sum(t.numel() * t.element_size() for t in list(prepared.parameters()) + list(prepared.buffers()))
