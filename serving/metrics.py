"""Prometheus metrics of one server, on their own registry and HTTP port (`--metrics-port`).

    landmarks_requests_total{method,category,outcome}      RPCs by outcome (gRPC code, lower case)
    landmarks_request_seconds{method,category}             whole RPC as seen by the server
    landmarks_queue_seconds{category}                      waiting in the batching queue
    landmarks_compute_seconds{category}                    forward pass + heatmap decoding
    landmarks_batch_size                                   requests per forward pass
    landmarks_dropped_total{category,reason}               dropped before compute (deadline, cancelled)
    landmarks_pending_requests                             queued, not yet computing
    landmarks_inflight_requests                            Detect/DetectBatch RPCs in handlers
    landmarks_register_seconds{outcome}                    RegisterAdapter time (validate, fold, store)
    landmarks_folded_cache_{capacity,resident}_bytes, _entries, _in_use      residency
    landmarks_folded_cache_{hits,misses,evictions}_total
    landmarks_categories                                   categories registered

Label cardinality is bounded: `category` is the request's category only if it is registered
(unknown names are `_unknown`, so a client cannot grow the label set with made-up names) and
only for the first `max_category_labels` names seen (later ones are `_other`); `outcome` is
one of the 17 gRPC codes; `method` one of the RPC names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serving.model_cache import CacheStats

__all__ = ["Measured", "Metrics", "start_metrics_server"]

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
REGISTER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN, OTHER = "_unknown", "_other"


class Measured(Protocol):
    """What the metrics read of the server's parts (`serving.services.Services` is one)."""

    def known(self, category: str) -> bool: ...
    def cache_stats(self) -> CacheStats: ...
    def category_count(self) -> int: ...


class _CacheCollector:
    def __init__(self, services: Callable[[], Measured | None]) -> None:
        self.services = services

    def describe(self):
        return []

    def collect(self):
        services = self.services()
        if services is None:
            return
        s = services.cache_stats()
        for name, value, doc in (
            ("capacity_bytes", s.capacity_bytes, "folded-weights cache budget"),
            ("resident_bytes", s.resident_bytes, "folded weights resident"),
            ("entries", s.entries, "folded models resident"),
            ("in_use", s.in_use, "folded models leased by running requests"),
        ):
            yield GaugeMetricFamily(f"landmarks_folded_cache_{name}", doc, value=value)
        for name, value in (("hits", s.hits), ("misses", s.misses), ("evictions", s.evictions)):
            yield CounterMetricFamily(f"landmarks_folded_cache_{name}", f"folded-weights cache {name}", value=value)
        yield GaugeMetricFamily("landmarks_categories", "categories registered", value=services.category_count())


class Metrics:
    def __init__(self, services: Callable[[], Measured | None] | None = None, max_category_labels: int = 64) -> None:
        """`services`: the server's parts once loaded (cache and registry figures, known categories)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.services = services
        self.max_category_labels = max_category_labels
        self._labels: set[str] = set()
        self._children: dict[tuple, tuple] = {}  # labels -> their series: labels() costs more than observe()
        self._lock = threading.Lock()
        r = self.registry
        self.requests = Counter("landmarks_requests", "RPCs by method, category and outcome",
                                ("method", "category", "outcome"), registry=r)
        self.request_seconds = Histogram("landmarks_request_seconds", "whole RPC as seen by the server",
                                         ("method", "category"), buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("landmarks_queue_seconds", "time in the batching queue (and cache fill)",
                                       ("category",), buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("landmarks_compute_seconds", "forward pass + heatmap decoding, per request",
                                         ("category",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("landmarks_batch_size", "requests per forward pass", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.dropped_total = Counter("landmarks_dropped", "requests dropped before compute",
                                     ("category", "reason"), registry=r)
        self.pending_requests = Gauge("landmarks_pending_requests", "requests queued, not yet computing",
                                      registry=r)
        self.inflight = Gauge("landmarks_inflight_requests", "Detect/DetectBatch RPCs being handled", registry=r)
        self.register_seconds = Histogram("landmarks_register_seconds",
                                          "RegisterAdapter time: validate, fold, trial forward, store",
                                          ("outcome",), buckets=REGISTER_BUCKETS, registry=r)
        if services is not None:
            r.register(_CacheCollector(services))

    # ------------------------------------------------------------------------------ labels
    def category_label(self, category: str) -> str:
        loaded = self.services() if self.services is not None else None
        with self._lock:
            if category in self._labels:
                return category
            if self.services is not None and (loaded is None or not loaded.known(category)):
                return UNKNOWN
            if len(self._labels) >= self.max_category_labels:
                return OTHER
            self._labels.add(category)
            return category

    # ------------------------------------------------------------------- batcher callbacks
    def pending(self, n: int) -> None:
        self.pending_requests.set(n)

    def batch(self, category: str, size: int) -> None:
        self.batch_size.observe(size)

    def dropped(self, category: str, reason: str) -> None:
        self.dropped_total.labels(self.category_label(category), reason).inc()

    # ----------------------------------------------------------------------- RPC outcomes
    def request(self, method: str, category: str, outcome: str, seconds: float) -> None:
        key = (method, self.category_label(category), outcome)
        series = self._children.get(key)
        if series is None:  # (label values are bounded: see the module notes)
            series = self._children[key] = (self.requests.labels(*key), self.request_seconds.labels(*key[:2]))
        series[0].inc()
        series[1].observe(seconds)

    def detection(self, category: str, queue_ms: float, compute_ms: float) -> None:
        key = (self.category_label(category),)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = (self.queue_seconds.labels(*key), self.compute_seconds.labels(*key))
        series[0].observe(queue_ms / 1e3)
        series[1].observe(compute_ms / 1e3)


def start_metrics_server(metrics: Metrics, host: str, port: int):
    """Serve /metrics on host:port (0: any free port); returns (http server, bound port)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server, server.server_port
