"""gRPC servicers: proto <-> Python values, then delegate. No model or file logic here.

Every handler maps `ServingError` to its status code and message; any other exception is a
bug, logged with its traceback and answered with INTERNAL.
"""

from __future__ import annotations

import functools
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from importlib import metadata
from typing import Any

import grpc

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc
from serving.engine import Detection
from serving.errors import ServingError
from serving.inputs import RequestLimits, prepare_input
from serving.metrics import Metrics
from serving.services import Lifecycle
from serving.versions import CategoryStatus, VersionEntry

__all__ = ["AdminServicer", "LandmarkServicer", "category_to_proto"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode


def _handler(method):
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as exc:
            context.abort(exc.code, exc.message)
        except Exception:  # a bug: never for bad input
            log.exception("%s failed", method.__name__)
            context.abort(Code.INTERNAL, f"internal error in {method.__name__}; see the server log")
    return wrapper


class LandmarkServicer(pb_grpc.LandmarkServiceServicer):
    """Detect and DetectBatch: hand the requests to the batcher (`DynamicBatcher.run`, which prepares
    each with `serving.inputs.prepare_input`), turn the detections into protos."""

    def __init__(self, lifecycle: Lifecycle, limits: RequestLimits, metrics: Metrics) -> None:
        self.lifecycle = lifecycle
        self.limits = limits
        self.metrics = metrics

    def _detect(self, requests: list[pb.DetectRequest], context) -> list[Detection]:
        services = self.lifecycle.require_serving()
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None and math.isfinite(remaining) else None
        with ExitStack() as leases:  # each request keeps the version it started with until it is answered
            prepare = functools.partial(prepare_input, registry=services.registry, leases=leases, limits=self.limits)
            return services.batcher.run(requests, prepare, deadline, context.add_callback)

    @staticmethod
    def _response(det: Detection, total_ms: float) -> pb.DetectResponse:
        # filled in place: after an idle gap that took ~2/3 of the time of building each Landmark and
        # passing the list (docs/benchmark.md)
        response = pb.DetectResponse(category=det.category, version=det.version, adapter_sha256=det.sha256)
        add = response.landmarks.add
        for (x, y), c, n in zip(det.points, det.confidence, det.names):
            add(x=x, y=y, confidence=c, name=n)
        box, timings = response.box, response.timings
        box.x0, box.y0, box.x1, box.y1 = det.box
        timings.decode_ms, timings.queue_ms, timings.compute_ms = det.decode_ms, det.queue_ms, det.compute_ms
        timings.total_ms = total_ms
        return response

    @_handler
    def Detect(self, request, context):
        t0 = time.perf_counter()
        self.metrics.inflight.inc()
        outcome = "internal"
        try:
            (det,) = self._detect([request], context)
            self.metrics.detection(det.category, det.queue_ms, det.compute_ms)
            outcome = "ok"
            return self._response(det, (time.perf_counter() - t0) * 1e3)
        except ServingError as exc:
            outcome = exc.code.name.lower()
            raise
        finally:
            self.metrics.inflight.dec()
            self.metrics.request("Detect", request.category, outcome, time.perf_counter() - t0)

    @_handler
    def DetectBatch(self, request, context):
        t0 = time.perf_counter()
        n, limit = len(request.requests), self.limits.max_batch_items
        if n > limit:
            raise ServingError(Code.INVALID_ARGUMENT, f"requests: {n} items, over this server's limit of {limit}; "
                                                      "split the batch")
        category = request.requests[0].category if n else ""
        self.metrics.inflight.inc()
        outcome = "internal"
        try:
            detections = self._detect(list(request.requests), context)
            for d in detections:
                self.metrics.detection(d.category, d.queue_ms, d.compute_ms)
            outcome = "ok"
        except ServingError as exc:
            outcome = exc.code.name.lower()
            if exc.item is not None:
                raise ServingError(exc.code, f"requests[{exc.item}].{exc.message}") from None
            raise
        finally:
            self.metrics.inflight.dec()
            self.metrics.request("DetectBatch", category, outcome, time.perf_counter() - t0)
        total = (time.perf_counter() - t0) * 1e3
        return pb.DetectBatchResponse(responses=[self._response(d, total) for d in detections])


_STATE = {"LOADING": pb.LOADING, "READY": pb.READY, "UNLOADING": pb.UNLOADING, "FAILED": pb.FAILED}


def _version_to_proto(entry: VersionEntry, precision_for: Callable[[Any], str]) -> pb.VersionInfo:
    adapter = entry.adapter
    return pb.VersionInfo(
        version=entry.version,
        state=_STATE[entry.state],
        sha256=entry.sha256,
        size_bytes=entry.size_bytes,
        created=entry.created,
        trained=adapter.metadata.get("created", "") if adapter else "",
        landmark_names=adapter.landmark_names if adapter else [],
        precision=precision_for(adapter) if adapter else "",
    )


def category_to_proto(status: CategoryStatus, precision_for: Callable[[Any], str]) -> pb.CategoryInfo:
    """`precision_for`: the backend's (the number format each version runs in)."""
    return pb.CategoryInfo(
        name=status.name,
        state=_STATE[status.state],
        num_landmarks=status.num_landmarks,
        input_size=status.input_size,
        active_version=status.active_version,
        active_sha256=status.active_sha256,
        core_sha256=status.core_sha256,
        versions=[_version_to_proto(v, precision_for)
                  for v in sorted(status.versions, key=lambda v: (v.created, v.version))],
        error=status.error,
    )


def _package_version() -> str:
    try:
        return metadata.version("landmark-adapters")
    except metadata.PackageNotFoundError:
        return "unknown"


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, lifecycle: Lifecycle, metrics: Metrics, device: str) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.device = device

    @_handler
    def RegisterAdapter(self, request, context):
        services = self.lifecycle.require()
        registry = services.registry
        which = request.WhichOneof("source")
        activate = request.activate if request.HasField("activate") else True
        t0, outcome = time.perf_counter(), "internal"
        try:
            status, created = registry.register(
                request.category, request.version,
                data=request.data if which == "data" else None,
                path=request.path if which == "path" else None,
                activate=activate,
            )
            outcome = "ok"
        except ServingError as exc:
            outcome = exc.code.name.lower()
            raise
        finally:
            self.metrics.register_seconds.labels(outcome).observe(time.perf_counter() - t0)
        return pb.RegisterAdapterResponse(category=category_to_proto(status, services.backend.precision_for),
                                          created=created)

    @_handler
    def SetActiveVersion(self, request, context):
        services = self.lifecycle.require()
        return category_to_proto(services.registry.set_active(request.category, request.version),
                                 services.backend.precision_for)

    @_handler
    def UnregisterAdapter(self, request, context):
        removed = self.lifecycle.require().registry.unregister(request.category, request.version or None)
        return pb.UnregisterAdapterResponse(removed_versions=removed)

    @_handler
    def ListCategories(self, request, context):
        services = self.lifecycle.require()
        return pb.ListCategoriesResponse(categories=[category_to_proto(s, services.backend.precision_for)
                                                     for s in services.registry.list()])

    @_handler
    def ServerInfo(self, request, context):
        import google.protobuf

        services = self.lifecycle.services
        versions = {"grpcio": grpc.__version__, "protobuf": google.protobuf.__version__,
                    "python": platform.python_version()}
        for package in ("onnxruntime", "torch"):  # torch only where a torch backend loaded it
            if (module := sys.modules.get(package)) is not None:
                versions[package] = module.__version__
        info = pb.ServerInfoResponse(server_version=_package_version(), api_version="landmarks.v1",
                                     versions=versions, ready=services is not None, device=self.device)
        if services is not None:
            stats = services.models.stats()
            info.core_sha256 = services.core.sha256
            info.device = services.backend.device
            info.backend = services.backend.name
            info.precision = getattr(services.backend, "precision", "fp32")
            # ORT fixes each session's threads at its creation; torch backends give a lone forward all of theirs
            info.forward_threads = getattr(services.backend, "threads", None) or services.batcher.threads.alone
            info.input_size = services.core.config.input_size
            info.core_num_landmarks = services.core.config.num_landmarks
            info.cache.CopyFrom(pb.CacheStats(capacity_bytes=stats.capacity_bytes, resident_bytes=stats.resident_bytes,
                                              entries=stats.entries, hits=stats.hits, misses=stats.misses,
                                              evictions=stats.evictions))
        return info
