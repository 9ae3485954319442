"""gRPC servicers: proto <-> Python values, then delegate. No model or file logic here.

Every handler maps `ServingError` to its status code and message; any other exception is a
bug, logged with its traceback and answered with INTERNAL.
"""

from __future__ import annotations

import functools
import logging
import math
import platform
import time
from importlib import metadata

import grpc

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc
from serving.engine import DetectInput, Detection
from serving.errors import ServingError
from serving.preprocess import crop_square, decode_encoded, decode_raw, resolve_box
from serving.registry import CategoryStatus, VersionEntry, validate_category, validate_version

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


def _prefixed(exc: ServingError, prefix: str) -> ServingError:
    return ServingError(exc.code, f"{prefix}{exc.message}") if prefix else exc


def _on_pool(method, pool):
    """`method` with gRPC's per-method thread pool attribute (read by grpc.server)."""
    @functools.wraps(method)
    def call(request, context):
        return method(request, context)

    call.experimental_thread_pool = pool
    return call


class LandmarkServicer(pb_grpc.LandmarkServiceServicer):
    def __init__(self, state, detect_pool=None) -> None:  # serving.server.ServerState, LeadFirstExecutor
        self.state = state
        if detect_pool is not None:  # where gRPC runs Detect and DetectBatch (serving.server.LeadFirstExecutor)
            self.Detect = _on_pool(self.Detect, detect_pool)
            self.DetectBatch = _on_pool(self.DetectBatch, detect_pool)

    def _decode(self, req: pb.DetectRequest, prefix: str = "") -> DetectInput:
        cfg = self.state.cfg
        try:
            validate_category(req.category)
            if req.version:
                validate_version(req.version)
            t0 = time.perf_counter()
            which = req.image.WhichOneof("data") if req.HasField("image") else None
            if which == "encoded":
                image = decode_encoded(req.image.encoded, cfg.max_image_pixels, cfg.min_image_side)
            elif which == "raw":
                raw = req.image.raw
                image = decode_raw(raw.pixels, raw.height, raw.width, raw.channels,
                                   cfg.max_image_pixels, cfg.min_image_side)
            else:
                raise ServingError(Code.INVALID_ARGUMENT, "image: missing; set image.encoded or image.raw")
            box = (req.box.x0, req.box.y0, req.box.x1, req.box.y1) if req.HasField("box") else None
            square = resolve_box(box, image.width, image.height)
            pixels = crop_square(image, square, self.state.registry.input_size(req.category, req.version))
            return DetectInput(req.category, req.version, pixels, square, (time.perf_counter() - t0) * 1e3)
        except ServingError as exc:
            raise _prefixed(exc, prefix) from None

    @staticmethod
    def _response(det: Detection, total_ms: float) -> pb.DetectResponse:
        x0, y0, x1, y1 = det.box
        return pb.DetectResponse(
            landmarks=[pb.Landmark(x=float(p[0]), y=float(p[1]), confidence=float(c), name=n)
                       for p, c, n in zip(det.points, det.confidence, det.names)],
            category=det.category,
            version=det.version,
            adapter_sha256=det.sha256,
            box=pb.Box(x0=x0, y0=y0, x1=x1, y1=y1),
            timings=pb.Timings(decode_ms=det.decode_ms, queue_ms=det.queue_ms, compute_ms=det.compute_ms,
                               total_ms=total_ms),
        )

    def _run(self, items_or_requests, context, many: bool) -> list[Detection]:
        """Decode, queue in the batcher, wait for the results (or the deadline / cancellation)."""
        batcher = self.state.require_batcher()
        prefixes = [f"requests[{i}]." if many else "" for i in range(len(items_or_requests))]
        pending: list = []

        def cancel():
            for p in pending:
                p.cancel()

        if batcher.on_lead():  # a lone RPC handed to the lead worker (serving.server.LeadFirstExecutor)
            items = [self._decode(req, prefix) for req, prefix in zip(items_or_requests, prefixes)]
            pending = batcher.run_inline(items)  # computed now: nothing to wait for or cancel
            deadline = None
        else:
            n = len(items_or_requests)
            batcher.arrive(n)
            try:
                items = [self._decode(req, prefix) for req, prefix in zip(items_or_requests, prefixes)]
            finally:
                batcher.depart(n)
            remaining = context.time_remaining()
            deadline = time.monotonic() + remaining if remaining is not None and math.isfinite(remaining) else None
            pending = batcher.submit(items, deadline)
            if not context.add_callback(cancel):  # the client went away: drop what has not been computed
                cancel()
        out = []
        for i, p in enumerate(pending):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                out.append(p.wait(wait))
            except BaseException as exc:
                cancel()  # all or nothing: the rest need not run (or this one's deadline passed while it ran)
                if isinstance(exc, ServingError):
                    raise _prefixed(exc, prefixes[i]) from None
                raise
        return out

    def _record(self, method: str, category: str, t0: float, outcome: str) -> None:
        self.state.metrics.request(method, category, outcome, time.perf_counter() - t0)

    @_handler
    def Detect(self, request, context):
        t0 = time.perf_counter()
        metrics = self.state.metrics
        metrics.inflight.inc()
        outcome = "internal"
        try:
            (det,) = self._run([request], context, many=False)
            metrics.detection(det.category, det.queue_ms, det.compute_ms)
            outcome = "ok"
            return self._response(det, (time.perf_counter() - t0) * 1e3)
        except ServingError as exc:
            outcome = exc.code.name.lower()
            raise
        finally:
            metrics.inflight.dec()
            self._record("Detect", request.category, t0, outcome)

    @_handler
    def DetectBatch(self, request, context):
        t0 = time.perf_counter()
        metrics = self.state.metrics
        n, limit = len(request.requests), self.state.cfg.max_batch_items
        if n > limit:
            raise ServingError(Code.INVALID_ARGUMENT, f"requests: {n} items, over this server's limit of {limit}; "
                                                      "split the batch")
        category = request.requests[0].category if n else ""
        metrics.inflight.inc()
        outcome = "internal"
        try:
            detections = self._run(list(request.requests), context, many=True)
            for d in detections:
                metrics.detection(d.category, d.queue_ms, d.compute_ms)
            outcome = "ok"
        except ServingError as exc:
            outcome = exc.code.name.lower()
            raise
        finally:
            metrics.inflight.dec()
            self._record("DetectBatch", category, t0, outcome)
        total = (time.perf_counter() - t0) * 1e3
        return pb.DetectBatchResponse(responses=[self._response(d, total) for d in detections])


_STATE = {"LOADING": pb.LOADING, "READY": pb.READY, "UNLOADING": pb.UNLOADING, "FAILED": pb.FAILED}


def _version_to_proto(entry: VersionEntry) -> pb.VersionInfo:
    adapter = entry.adapter
    return pb.VersionInfo(
        version=entry.version,
        state=_STATE[entry.state],
        sha256=entry.sha256,
        size_bytes=entry.size_bytes,
        created=entry.created,
        trained=adapter.metadata.get("created", "") if adapter else "",
        landmark_names=adapter.landmark_names if adapter else [],
    )


def category_to_proto(status: CategoryStatus) -> pb.CategoryInfo:
    return pb.CategoryInfo(
        name=status.name,
        state=_STATE[status.state],
        num_landmarks=status.num_landmarks,
        input_size=status.input_size,
        active_version=status.active_version,
        active_sha256=status.active_sha256,
        core_sha256=status.core_sha256,
        versions=[_version_to_proto(v) for v in sorted(status.versions, key=lambda v: (v.created, v.version))],
        error=status.error,
    )


def _package_version() -> str:
    try:
        return metadata.version("landmark-adapters")
    except metadata.PackageNotFoundError:
        return "unknown"


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, state) -> None:
        self.state = state

    @_handler
    def RegisterAdapter(self, request, context):
        registry = self.state.require_registry()
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
            self.state.metrics.register_seconds.labels(outcome).observe(time.perf_counter() - t0)
        return pb.RegisterAdapterResponse(category=category_to_proto(status), created=created)

    @_handler
    def SetActiveVersion(self, request, context):
        return category_to_proto(self.state.require_registry().set_active(request.category, request.version))

    @_handler
    def UnregisterAdapter(self, request, context):
        removed = self.state.require_registry().unregister(request.category, request.version or None)
        return pb.UnregisterAdapterResponse(removed_versions=removed)

    @_handler
    def ListCategories(self, request, context):
        registry = self.state.require_registry()
        return pb.ListCategoriesResponse(categories=[category_to_proto(s) for s in registry.list()])

    @_handler
    def ServerInfo(self, request, context):
        import google.protobuf
        import torch

        st = self.state
        versions = {"torch": torch.__version__, "grpcio": grpc.__version__,
                    "protobuf": google.protobuf.__version__, "python": platform.python_version()}
        info = pb.ServerInfoResponse(server_version=_package_version(), api_version="landmarks.v1",
                                     versions=versions, ready=st.ready, device=st.cfg.device)
        if st.ready:
            stats = st.cache.stats()
            info.core_sha256 = st.core.sha256
            info.device = st.backend.device
            info.backend = st.backend.name
            info.input_size = st.core.config.input_size
            info.core_num_landmarks = st.core.config.num_landmarks
            info.cache.CopyFrom(pb.CacheStats(capacity_bytes=stats.capacity_bytes, resident_bytes=stats.resident_bytes,
                                              entries=stats.entries, hits=stats.hits, misses=stats.misses,
                                              evictions=stats.evictions))
        return info
