"""The compute seam: turn (core, adapter) into something runnable, and run it on a batch.

`FoldedModels` (serving.models) is the only caller of `prepare`; the engine calls `locate`. Three
backends, all on folded weights (the adapter's projections multiplied into the core's conv
weights once):
- `onnxruntime` (`serving.backends.onnxruntime`, the default): one ONNX Runtime session per adapter
  version, made by the inference runtime (`landmarks.runtime`: numpy fold, the category's ONNX
  graph, fp32 or int8); CPU, or CUDA with `--device cuda` and `onnxruntime-gpu`; needs no torch;
- `torchscript` (`serving.backends.torchscript`, needs torch: the train extra): one traced graph that
  takes each adapter's folded tensors as inputs;
- `eager`: the folded network in plain PyTorch, the reference the others are tested against.
Which is the default and why: docs/benchmark.md ("Backends"), measured with
`python scripts/serving_speed.py backends`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, Protocol

from landmarks.runtime.sessions import blank_crops  # numpy only

if TYPE_CHECKING:  # importing this package loads no torch: serving.config reads the names
    import numpy as np

    from landmarks.adapter_io import Adapter, Core

__all__ = ["BACKEND_NAMES", "DEFAULT_BACKEND", "PRECISIONS", "Backend", "available_backends", "backend_class",
           "blank_crops", "make_backend", "require_backend"]


# number formats of the forward pass (`--precision`): bf16 on the torch backends (their dtypes live
# there), int8 on onnxruntime for adapters calibrated with `landmarks calibrate` (landmarks.int8);
# auto (the default): int8 for a calibrated adapter where the CPU has 8-bit dot products, else fp32
PRECISIONS = ("auto", "fp32", "bf16", "int8")


class Backend(Protocol):
    name: str
    device: str

    def prepare(self, adapter: Adapter) -> Any:
        """A runnable model for this adapter on the backend's device, warmed up (may raise ValueError)."""

    def run(self, prepared: Any, images: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float images in [0, 1] -> (B, K, S/4, S/4) float32 heatmaps, numpy on the CPU.
        The trial forward's check; requests go through `locate`."""

    def locate(self, prepared: Any, pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the server calls, in numpy (a request's path from crop to answer touches no torch: after
        an idle gap torch's calls are the slower, docs/benchmark.md). (B, S, S, 3) uint8 crops
        (`landmarks.images.pixels_to_images` makes them the model's input) and (B, 4) float64 boxes,
        the client's pixels each crop was cut from (edge coordinates) -> `landmarks.heatmaps.locate` of
        the heatmaps, mapped back into those boxes (`landmarks.geometry.input_to_original`): (B, K, 2)
        points in the client's pixels and (B, K) confidences, float32."""

    def nbytes(self, prepared: Any) -> int:
        """Memory the prepared model holds (for the cache budget)."""

    def precision_for(self, adapter: Adapter) -> str:
        """The number format this backend runs `adapter` in (fp32, bf16 or int8)."""


# name -> (module, class); a backend's module is imported only when it is used
_BACKENDS = {
    "onnxruntime": ("serving.backends.onnxruntime", "OnnxRuntimeBackend"),
    "torchscript": ("serving.backends.torchscript", "TorchScriptBackend"),
    "eager": ("serving.backends.torchscript", "EagerBackend"),
}
BACKEND_NAMES = tuple(_BACKENDS)
# the fastest on the machines measured (docs/benchmark.md, "Backends"), and the one the base install runs
DEFAULT_BACKEND = "onnxruntime"
# what each backend needs beyond the base install
_NEEDS = {"onnxruntime": "onnxruntime", "torchscript": "torch", "eager": "torch"}
TRAIN_EXTRA = "pip install 'landmark-adapters[train]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules (None) or by an import hook
        return False


def available_backends() -> tuple[str, ...]:
    """The backends this installation can run (the torch ones need torch: the train extra)."""
    return tuple(n for n in BACKEND_NAMES if _installed(_NEEDS[n]))


def require_backend(name: str) -> None:
    """ValueError saying what to install when backend `name` cannot run here."""
    if name in _NEEDS and not _installed(_NEEDS[name]):
        hint = TRAIN_EXTRA if _NEEDS[name] == "torch" else "pip install onnxruntime (or onnxruntime-gpu)"
        raise ValueError(f"--backend {name} needs {_NEEDS[name]}, which is not installed: {hint}")


def backend_class(name: str) -> type:
    try:
        module, cls = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}") from None
    require_backend(name)
    return getattr(importlib.import_module(module), cls)


def make_backend(name: str, core: Core, device: str = "cpu", **options: Any) -> Backend:
    """The backend called `name` (one of BACKEND_NAMES) for `core` on `device`; `options` go to its
    constructor (onnxruntime: `threads`, `precision`)."""
    return backend_class(name)(core, device, **options)
