"""InferenceEngine: one forward pass for a group of requests of one adapter version.

Each `DetectInput` already carries the version its request leased and its crop at that version's
input size (`serving.inputs.prepare_input`), so the engine only stacks the
crops, leases the version's prepared model (`FoldedModels.lease`, built on a cache miss) and asks
the backend for the points in each request's own pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from serving.backends import Backend
from serving.inputs import DetectInput
from serving.models import FoldedModels
from serving.preprocess import Box

__all__ = ["Detection", "InferenceEngine"]


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
    def __init__(self, models: FoldedModels, backend: Backend) -> None:
        self.models = models
        self.backend = backend

    def run_group(self, items: list[DetectInput]) -> list[Detection]:
        """One forward pass for items of one group (same leased version)."""
        t0 = time.perf_counter()
        entry = items[0].entry
        adapter = entry.adapter
        assert adapter is not None and all(it.entry is entry for it in items)
        # numpy from crop to answer: after an idle gap a torch call costs more than a numpy one (its
        # code is cold), and the default backend needs none (docs/benchmark.md)
        if len(items) == 1:  # np.stack costs ~0.06 ms more after idleness than a view
            batch, boxes = items[0].pixels[None], np.array([items[0].box], dtype=np.float64)
        else:
            batch, boxes = np.stack([it.pixels for it in items]), np.array([it.box for it in items], dtype=np.float64)
        with self.models.lease(entry.cache_key, adapter) as model:
            t1 = time.perf_counter()
            points, confidence = self.backend.locate(model, batch, boxes)
        if points.shape[0] != len(items):
            raise RuntimeError(f"backend returned {points.shape[0]} outputs for {len(items)} inputs")
        points, confidence = points.tolist(), confidence.tolist()
        t2 = time.perf_counter()
        names = adapter.landmark_names
        return [
            Detection(p, c, names, entry.category, entry.version, entry.sha256, it.box,
                      it.decode_ms, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
            for p, c, it in zip(points, confidence, items)
        ]
