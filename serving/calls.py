"""One detect call, whichever plane it came in on (gRPC Detect and DetectBatch, HTTP /v1/detect):
the in-flight gauge, the request metrics with the call's outcome, the version leases held until
the answer is made, and the error the client gets.

    detections, t0 = calls.detect("Detect", [query], deadline, context.add_callback)

A failure is a `ServingError`: for a batch (several items) an item's own failure names the item
("requests[1].image.encoded: ..."; ErrorInfo metadata "index"), for a lone request it is the
request's error as it is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial

import grpc

from serving.engine import Detection
from serving.errors import ItemError, Reason, ServingError
from serving.inputs import RequestLimits, prepare_input
from serving.metrics import Metrics
from serving.query import DetectQuery
from serving.services import Lifecycle

__all__ = ["DetectCalls", "outcome", "remaining_time"]

# gRPC reports a call without a deadline as ~9.2e18 s remaining (its infinite future), a timeout no
# wait accepts (OverflowError): anything beyond a year is no deadline.
NO_DEADLINE_BEYOND_S = 365 * 24 * 3600.0

Code = grpc.StatusCode


@contextmanager
def outcome(record: Callable[[str, float], None]) -> Iterator[None]:
    """Time the block and `record(outcome, seconds)` at its end: "ok", the gRPC code of a ServingError
    in lower case, or "internal" for anything else."""
    t0 = time.perf_counter()
    result = "internal"
    try:
        yield
        result = "ok"
    except ServingError as exc:
        result = exc.code.name.lower()
        raise
    finally:
        record(result, time.perf_counter() - t0)


def remaining_time(context) -> float | None:
    """The client's remaining time in seconds from a gRPC context (or anything with `time_remaining`);
    None for a call without a deadline."""
    remaining = context.time_remaining()
    if remaining is None or not math.isfinite(remaining) or remaining > NO_DEADLINE_BEYOND_S:
        return None
    return max(0.0, remaining)


class DetectCalls:
    def __init__(self, lifecycle: Lifecycle, limits: RequestLimits, metrics: Metrics | None) -> None:
        self.lifecycle = lifecycle
        self.limits = limits
        self.metrics = metrics

    def detect(self, method: str, queries: Sequence[DetectQuery], deadline: float | None = None,
               on_cancel: Callable[[Callable[[], None]], bool] | None = None,
               batch: bool = False) -> tuple[list[Detection], float]:
        """Run `queries` through the batcher; (their detections in order, the call's start as a
        time.perf_counter() value, for the answer's total_ms). `method` labels the metrics; `batch`:
        the call is a DetectBatch (its size is checked and its items named in errors). `deadline`
        is a time.monotonic() value; `on_cancel` as `DynamicBatcher.run` takes it."""
        t0 = time.perf_counter()
        metrics = self.metrics
        category = queries[0].category if queries else ""
        record = (lambda result, seconds: metrics.request(method, category, result, seconds)) if metrics else None
        if metrics is not None:
            metrics.inflight.inc()
        try:
            with outcome(record or (lambda result, seconds: None)):
                detections = self._run(queries, deadline, on_cancel, batch)
        finally:
            if metrics is not None:
                metrics.inflight.dec()
        if metrics is not None:
            for d in detections:
                metrics.detection(d.category, d.queue_ms, d.compute_ms)
        return detections, t0

    def _run(self, queries, deadline, on_cancel, batch: bool) -> list[Detection]:
        n, limit = len(queries), self.limits.max_batch_items
        if batch and n > limit:
            raise ServingError(Code.INVALID_ARGUMENT, Reason.BATCH_TOO_LARGE,
                               f"{n} items, over this server's limit of {limit}; split the batch", field="requests")
        services = self.lifecycle.require_serving()
        try:
            with ExitStack() as leases:  # each request keeps the version it started with until it is answered
                prepare = partial(prepare_input, registry=services.registry, leases=leases, limits=self.limits)
                return services.batcher.run(queries, prepare, deadline, on_cancel)
        except ItemError as exc:
            raise (exc.for_batch() if batch else exc.cause) from None
