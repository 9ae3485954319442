"""Detection pipeline between the servicer (protos) and the backend (tensors).

`InferenceEngine.detect(items)` takes decoded, cropped inputs (`DetectInput`), groups them by
(category, requested version), leases each group's adapter version from the registry and its
folded model from the cache, runs the backend once per group, and decodes the heatmaps into
landmarks in the client's pixels. The dynamic-batching queue (`serving.batching`) collects
`DetectInput`s from concurrent RPCs and calls `run_group` per flush.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import torch

from serving.backend import Backend
from serving.errors import ServingError
from serving.folding import CacheFullError, FoldedCache
from serving.preprocess import Box, stack_pixels
from serving.registry import AdapterRegistry

__all__ = ["DetectInput", "Detection", "InferenceEngine"]


@dataclass
class DetectInput:
    category: str
    version: str        # "" = active
    pixels: torch.Tensor  # (S, S, 3) uint8: the crop (serving.preprocess.crop_square)
    box: Box            # square box in original pixels (edge coordinates)
    decode_ms: float = 0.0


@dataclass
class Detection:
    points: list[list[float]]  # K x (x, y) in the client's pixels
    confidence: list[float]    # K
    names: list[str]
    category: str
    version: str
    sha256: str
    box: Box
    decode_ms: float
    queue_ms: float
    compute_ms: float


class InferenceEngine:
    def __init__(self, registry: AdapterRegistry, cache: FoldedCache, backend: Backend) -> None:
        self.registry = registry
        self.cache = cache
        self.backend = backend

    @property
    def input_size(self) -> int:
        return self.registry.core.config.input_size

    def detect(self, items: list[DetectInput]) -> list[Detection]:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item.category, item.version), []).append(i)
        out: list[Detection | None] = [None] * len(items)
        for (category, version), indices in groups.items():
            for i, det in zip(indices, self.run_group(category, version, [items[i] for i in indices])):
                out[i] = det
        return out  # type: ignore[return-value]

    def run_group(self, category: str, version: str, items: list[DetectInput]) -> list[Detection]:
        """One forward pass for items of one category/version request."""
        t0 = time.perf_counter()
        with self.registry.acquire(category, version) as lease:
            entry = lease.entry
            adapter = lease.adapter

            def build():
                prepared = self.backend.prepare(adapter)
                return prepared, self.backend.nbytes(prepared)

            try:
                size = adapter.config.input_size
                # the servicer crops at the adapter's size (registry.input_size); a request decoded
                # just before its category switched to a version of another size is resampled here
                batch = stack_pixels([it.pixels for it in items], size)
                boxes = torch.tensor([it.box for it in items], dtype=torch.float64)
                with self.cache.lease(entry.cache_key, build) as model:
                    t1 = time.perf_counter()
                    points, confidence = self.backend.locate(model, batch, boxes)
            except CacheFullError as exc:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
            if points.shape[0] != len(items):
                raise RuntimeError(f"backend returned {points.shape[0]} outputs for {len(items)} inputs")
            points, confidence = points.tolist(), confidence.tolist()
            t2 = time.perf_counter()
            names = adapter.landmark_names
            names = names if len(names) == adapter.num_landmarks else [""] * adapter.num_landmarks
            return [
                Detection(p, c, names, category, entry.version, entry.sha256, it.box,
                          it.decode_ms, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
                for p, c, it in zip(points, confidence, items)
            ]
