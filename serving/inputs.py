"""A client's request (`serving.query.DetectQuery`) -> a `DetectInput`: lease the version it asks for, decode its image,
crop once at that version's input size. The batcher calls `prepare_input` for each request."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from serving.preprocess import decode_crop
from serving.query import Box, DetectQuery
from serving.registry import AdapterRegistry
from serving.versions import VersionEntry

__all__ = ["DetectInput", "RequestLimits", "prepare_input"]


@dataclass(frozen=True)
class RequestLimits:
    max_image_pixels: int
    min_image_side: int
    max_batch_items: int


@dataclass
class DetectInput:
    entry: VersionEntry   # the version the request leased
    pixels: np.ndarray    # (S, S, 3) uint8: the crop at the version's input size
    box: Box              # square box in original pixels (edge coordinates)
    decode_ms: float = 0.0

    @property
    def group(self) -> tuple[str, str, str]:
        """Requests with the same group run in one forward pass."""
        return self.entry.cache_key


def prepare_input(request: DetectQuery, registry: AdapterRegistry, leases: ExitStack,
                  limits: RequestLimits) -> DetectInput:
    """Raises ServingError (the version's NOT_FOUND / UNAVAILABLE, the image's INVALID_ARGUMENT). The
    lease joins `leases`: the caller holds it until the request is answered, whatever admin does."""
    lease = leases.enter_context(registry.acquire(request.category, request.version))
    t0 = time.perf_counter()
    pixels, square = decode_crop(request, lease.adapter.config.input_size, limits.max_image_pixels,
                                 limits.min_image_side)
    return DetectInput(lease.entry, pixels, square, (time.perf_counter() - t0) * 1e3)
