"""gRPC servicers: proto <-> Python values, then delegate. No model or file logic here.

Every handler answers a `ServingError` with its status: code, message and details
(`ServingError.status`); any other exception is a bug, logged with its traceback and answered
with INTERNAL.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from importlib import metadata

import grpc

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc
from serving.backends import Backend
from serving.calls import DetectCalls, outcome, remaining_time
from serving.engine import Detection
from serving.errors import grpc_handler
from serving.inputs import RequestLimits
from serving.metrics import Metrics
from serving.precision import precision_of
from serving.query import DetectQuery
from serving.services import Lifecycle
from serving.versions import CategoryStatus, VersionEntry

__all__ = ["AdminServicer", "LandmarkServicer", "category_to_proto"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode


def _deadline(context) -> float | None:
    """The RPC's deadline as a time.monotonic() value (None: none)."""
    remaining = remaining_time(context)
    return None if remaining is None else time.monotonic() + remaining


class LandmarkServicer(pb_grpc.LandmarkServiceServicer):
    """Detect and DetectBatch: protos -> `DetectQuery`s for the call helper (`serving.calls`), its
    detections -> protos."""

    def __init__(self, lifecycle: Lifecycle, limits: RequestLimits, metrics: Metrics) -> None:
        self.calls = DetectCalls(lifecycle, limits, metrics)

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

    @grpc_handler
    def Detect(self, request, context):
        (det,), t0 = self.calls.detect("Detect", [DetectQuery.from_proto(request)], _deadline(context),
                                       context.add_callback)
        return self._response(det, (time.perf_counter() - t0) * 1e3)

    @grpc_handler
    def DetectBatch(self, request, context):
        queries = [DetectQuery.from_proto(r) for r in request.requests]
        detections, t0 = self.calls.detect("DetectBatch", queries, _deadline(context), context.add_callback,
                                           batch=True)
        total = (time.perf_counter() - t0) * 1e3
        return pb.DetectBatchResponse(responses=[self._response(d, total) for d in detections])


_STATE = {"LOADING": pb.LOADING, "READY": pb.READY, "UNLOADING": pb.UNLOADING, "FAILED": pb.FAILED}


def _version_to_proto(entry: VersionEntry, backend: Backend) -> pb.VersionInfo:
    adapter = entry.adapter
    precision, why = precision_of(backend, adapter) if adapter else ("", "")
    return pb.VersionInfo(
        version=entry.version,
        state=_STATE[entry.state],
        sha256=entry.sha256,
        size_bytes=entry.size_bytes,
        created=entry.created,
        trained=adapter.metadata.get("created", "") if adapter else "",
        landmark_names=adapter.landmark_names if adapter else [],
        precision=precision,
        precision_reason=why,
    )


def category_to_proto(status: CategoryStatus, backend: Backend) -> pb.CategoryInfo:
    """`backend`: the one its versions run on (the number format each runs in, and why)."""
    return pb.CategoryInfo(
        name=status.name,
        state=_STATE[status.state],
        num_landmarks=status.num_landmarks,
        input_size=status.input_size,
        active_version=status.active_version,
        active_sha256=status.active_sha256,
        core_sha256=status.core_sha256,
        versions=[_version_to_proto(v, backend)
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

    @grpc_handler
    def RegisterAdapter(self, request, context):
        services = self.lifecycle.require()
        registry = services.registry
        which = request.WhichOneof("source")
        activate = request.activate if request.HasField("activate") else True
        with outcome(lambda result, seconds: self.metrics.register_seconds.labels(result).observe(seconds)):
            status, created = registry.register(
                request.category, request.version,
                data=request.data if which == "data" else None,
                path=request.path if which == "path" else None,
                activate=activate,
            )
        return pb.RegisterAdapterResponse(category=category_to_proto(status, services.backend),
                                          created=created)

    @grpc_handler
    def SetActiveVersion(self, request, context):
        services = self.lifecycle.require()
        return category_to_proto(services.registry.set_active(request.category, request.version),
                                 services.backend)

    @grpc_handler
    def UnregisterAdapter(self, request, context):
        removed = self.lifecycle.require().registry.unregister(request.category, request.version or None)
        return pb.UnregisterAdapterResponse(removed_versions=removed)

    @grpc_handler
    def ListCategories(self, request, context):
        services = self.lifecycle.require()
        return pb.ListCategoriesResponse(categories=[category_to_proto(s, services.backend)
                                                     for s in services.registry.list()])

    @grpc_handler
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
