"""FoldedModels: the one owner of prepared (folded, warmed-up) models and of the cache they live in.

Registration asks it for a `trial` (fold, run a dummy image, check the output) and `admit`s the
result; requests `lease` a version's model, built on a cache miss; unregistering `discard`s it.
The registry never touches the backend or the cache itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np

from landmarks.adapter_io import Adapter
from serving.backends import Backend
from serving.errors import Reason, ServingError
from serving.model_cache import CacheFullError, CacheStats, ModelCache

__all__ = ["FoldedModels"]

Code = grpc.StatusCode


class FoldedModels:
    def __init__(self, backend: Backend, cache: ModelCache) -> None:
        self.backend = backend
        self.cache = cache

    def trial(self, adapter: Adapter, label: str) -> Any:
        """Fold `adapter` and run it once on a dummy image; INVALID_ARGUMENT if that fails or gives
        anything but finite heatmaps of the expected shape. Returns the prepared model."""
        try:
            prepared = self.backend.prepare(adapter)
        except ValueError as exc:  # folding produced non-finite weights
            raise ServingError(Code.INVALID_ARGUMENT, Reason.ADAPTER_TRIAL_FAILED, f"{label}: {exc}",
                               field="adapter") from None
        size = adapter.config.input_size
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        dummy = np.stack((np.broadcast_to(ramp[None, :], (size, size)), np.broadcast_to(ramp[:, None], (size, size)),
                          np.full((size, size), 0.5, np.float32)))[None]
        out = np.asarray(self.backend.run(prepared, dummy))
        expected = (1, adapter.num_landmarks, size // 4, size // 4)
        if tuple(out.shape) != expected:
            raise ServingError(Code.INVALID_ARGUMENT, Reason.ADAPTER_TRIAL_FAILED,
                               f"{label}: trial forward gave shape {tuple(out.shape)}, expected {expected}",
                               field="adapter")
        if not np.isfinite(out).all():
            raise ServingError(Code.INVALID_ARGUMENT, Reason.ADAPTER_TRIAL_FAILED,
                               f"{label}: trial forward on a dummy image produced NaN/Inf heatmaps "
                               "(batch-norm statistics or weights out of range); the file is broken", field="adapter")
        return prepared

    def admit(self, key: Hashable, prepared: Any) -> None:
        """Keep a trial's model warm (if it fits; otherwise the first request builds it again)."""
        self.cache.put(key, prepared, self.backend.nbytes(prepared))

    @contextmanager
    def lease(self, key: Hashable, adapter: Adapter) -> Iterator[Any]:
        """The prepared model of `adapter` (built on a miss), kept resident until the block ends."""
        def build():
            prepared = self.backend.prepare(adapter)
            return prepared, self.backend.nbytes(prepared)

        try:
            with self.cache.lease(key, build) as model:
                yield model
        except CacheFullError as exc:
            raise ServingError(Code.RESOURCE_EXHAUSTED, Reason.CACHE_FULL, str(exc)) from None

    def discard(self, key: Hashable) -> None:
        self.cache.discard(key)

    def stats(self) -> CacheStats:
        return self.cache.stats()
