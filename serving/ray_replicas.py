"""What runs in the replicas of `landmarks serve-ray` (serving/ray_app.py): each `Replica` builds the
single server's services and servicers and folds categories on demand through Ray Serve's
multiplexing; the one `Admin` replica is the shared store's only writer. Also the options both
read (`RayOptions`) and the model id a request is routed by (`model_id`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, replace

import grpc
from ray import serve

from landmarks.v1 import landmarks_pb2 as pb
from serving.config import ServerConfig
from serving.errors import DETAILS_KEY, ServingError
from serving.inputs import RequestLimits
from serving.metrics import Metrics
from serving.names import CATEGORY_RE, VERSION_RE
from serving.servicer import AdminServicer, LandmarkServicer
from serving.services import Lifecycle, load_services
from serving.work import LeadFirstExecutor

__all__ = ["Admin", "RayOptions", "Replica", "model_id"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode
INFERENCE, ADMIN = (pb.DESCRIPTOR.services_by_name[n].full_name for n in ("LandmarkService", "AdminService"))
# the AdminService request message of each method (the Admin replica parses what the ingress forwards)
_ADMIN_REQUESTS = {"RegisterAdapter": "RegisterAdapterRequest", "SetActiveVersion": "SetActiveVersionRequest",
                   "UnregisterAdapter": "UnregisterAdapterRequest", "ListCategories": "ListCategoriesRequest",
                   "ServerInfo": "ServerInfoRequest"}


@dataclass(frozen=True)
class RayOptions:
    replicas: int = 2                       # fixed replica count, unless max_replicas is set
    min_replicas: int | None = None         # autoscaling bounds (Ray Serve's autoscaler)
    max_replicas: int | None = None
    target_ongoing_requests: float = 4.0    # autoscaling: requests in flight per replica
    max_categories_per_replica: int = 16    # folded categories a replica keeps (LRU)
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    max_ongoing_requests: int = 32          # per replica: room for the batcher to form batches
    sync_s: float = 1.0                     # how often a replica re-reads the store

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_categories_per_replica < 1 or self.max_ongoing_requests < 1:
            raise ValueError("--replicas, --max-categories-per-replica and --max-ongoing must be >= 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both --min-replicas and --max-replicas")
        if self.max_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas >= 1:
            raise ValueError(f"need 0 <= --min-replicas <= --max-replicas >= 1, got {self.min_replicas}, "
                             f"{self.max_replicas}")
        if self.sync_s <= 0 or self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ValueError("--sync-s must be > 0 and --replica-cpus/--replica-gpus >= 0")


def model_id(category: str, version: str) -> str:
    """The multiplexed model id of a category's version ('' routes anywhere: a name the replica refuses)."""
    if not CATEGORY_RE.fullmatch(category or "") or (version and not VERSION_RE.fullmatch(version)):
        return ""
    return f"{category}@{version}"


# --------------------------------------------------------------------------- calls across Ray
class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, status: bytes) -> None:
        super().__init__(code.name)
        self.code, self.status = code, status


class _Context:
    """What the servicers use of a gRPC context, for a call that reached this replica through Ray: the
    client's remaining time as the router sent it (`deadline_s`, measured here from arrival, so the
    nodes' clocks need not agree), and cancellation when the router stops waiting (`cancel`)."""

    def __init__(self, deadline_s: float | None = None) -> None:
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self._callbacks: list = []
        self._cancelled = False
        self._lock = threading.Lock()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_callback(self, callback) -> bool:
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return True
        return False

    def cancel(self) -> None:
        with self._lock:
            self._cancelled, callbacks = True, self._callbacks
        for callback in callbacks:
            callback()

    def abort_with_status(self, status: grpc.Status):
        details = dict(status.trailing_metadata or ()).get(DETAILS_KEY, b"")
        raise _Aborted(status.code, details)


def _invoke(method, request, context: _Context | None = None) -> tuple[str, bytes]:
    """A servicer method on `request` -> ("", response bytes) or (status code name, the serialized
    google.rpc.Status the servicer aborted with)."""
    try:
        return "", method(request, context or _Context()).SerializeToString()
    except _Aborted as exc:
        return exc.code.name, exc.status


def _load(cfg: ServerConfig, names: tuple[str, ...]) -> tuple[Lifecycle, Metrics]:
    from grpc_health.v1 import health

    lifecycle = Lifecycle(health.HealthServicer(), names)  # (health is answered by the Ingress)
    metrics = Metrics(lambda: lifecycle.services)
    lifecycle.publish(load_services(cfg, metrics))
    return lifecycle, metrics


def _start_sync(registry, sync_s: float, stop: threading.Event, report=None) -> None:
    def loop() -> None:
        while not stop.wait(sync_s):
            try:
                registry.sync_store()
                if report is not None:
                    report()
            except Exception:  # never let the loop die; the next round retries
                log.exception("store sync failed")

    threading.Thread(target=loop, name="landmarks-store-sync", daemon=True).start()


# ------------------------------------------------------------------------------------ replica
class _Held:
    """A category version folded on this replica, as Ray's multiplexing LRU holds it; evicting it
    (`__del__`, called by Ray) drops its folded weights."""

    def __init__(self, replica: Replica, mid: str, key: tuple) -> None:
        self.replica, self.mid, self.key = replica, mid, key
        self.released = False

    def __del__(self) -> None:
        # once: Ray calls it on eviction, and garbage collection may call it again after a re-fold
        if not self.released:
            self.released = True
            self.replica._held.discard(self.mid)
            self.replica.lifecycle.require().models.discard(self.key)


def _active_version(registry, category: str) -> str | None:
    try:
        return registry.status(category).active_version
    except ServingError:
        return None


class Replica:
    """One model replica: `landmarks serve`'s services and LandmarkServicer, without its gRPC server."""

    def __init__(self, cfg: ServerConfig, opts: RayOptions, admin=None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.lifecycle, metrics = _load(cfg, (INFERENCE,))
        services = self.lifecycle.require()
        for status in services.registry.list():  # folded on demand only: multiplexing decides what stays
            for entry in status.versions:
                services.models.discard(entry.cache_key)
        limits = RequestLimits(cfg.max_image_pixels, cfg.min_image_side, cfg.max_batch_items)
        self.servicer = LandmarkServicer(self.lifecycle, limits, metrics)
        self._handlers = concurrent.futures.ThreadPoolExecutor(opts.max_ongoing_requests + 4,
                                                               thread_name_prefix="landmarks")
        # as `landmarks serve` does: a lone request runs whole on the lead batch worker
        self._executor = LeadFirstExecutor(lambda fn, args: services.batcher.lead(fn, args), self._handlers)
        self._held: set[str] = set()
        self._stop = threading.Event()
        try:
            self.name = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001  (outside Serve: tests)
            self.name = f"pid{os.getpid()}"

        def report() -> None:  # the admin sums the replicas' caches into ServerInfo
            admin.report.remote(self.name, dataclasses.asdict(services.models.stats()))

        _start_sync(services.registry, opts.sync_s, self._stop, report if admin is not None else None)

        async def fold(mid: str) -> _Held:  # (a plain function: Ray keeps its LRU as an attribute of it)
            return await asyncio.get_running_loop().run_in_executor(self._handlers, self._fold_now, mid)

        self.get_model = serve.multiplexed(max_num_models_per_replica=opts.max_categories_per_replica)(fold)

    def _fold_now(self, mid: str) -> _Held:
        services = self.lifecycle.require()
        category, _, version = mid.partition("@")
        registry = services.registry
        if version and _active_version(registry, category) != version:
            registry.sync_store(category)  # activated a moment ago? requests without a version follow it
        try:
            lease = registry.acquire(category, version)
        except ServingError:  # registered elsewhere a moment ago? read the store (that category's files), once
            registry.sync_store(category)
            lease = registry.acquire(category, version)
        with lease, services.models.lease(lease.entry.cache_key, lease.adapter):
            pass  # folded now, and kept in the cache
        self._held.add(mid)
        return _Held(self, mid, lease.entry.cache_key)

    async def detect(self, method: str, request: bytes, deadline_s: float | None = None
                     ) -> tuple[str, bytes, bool, str]:
        """Detect or DetectBatch (serialized), with the client's remaining seconds ->
        (code name or "", response bytes or the serialized google.rpc.Status, whether this replica
        already held the model, this replica's name). Work whose deadline passes is dropped, as is
        work the router cancels (Ray cancels this coroutine)."""
        mid = serve.get_multiplexed_model_id()
        held = mid in self._held
        if mid:
            try:
                await self.get_model(mid)
            except ServingError as exc:
                return exc.code.name, exc.status().SerializeToString(), held, self.name
        parse = pb.DetectRequest if method == "Detect" else pb.DetectBatchRequest
        call = getattr(self.servicer, method)
        context = _Context(deadline_s)
        try:
            code, payload = await asyncio.wrap_future(
                self._executor.submit(_invoke, call, parse.FromString(request), context))
        except asyncio.CancelledError:
            context.cancel()  # the batcher drops this call's items it has not computed
            raise
        return code, payload, held, self.name

    def __del__(self) -> None:
        self._stop.set()


# -------------------------------------------------------------------------------------- admin
class Admin:
    """The shared store's one writer: `landmarks serve`'s registry (same validation, trial forward and
    atomic writes) behind its AdminServicer."""

    def __init__(self, cfg: ServerConfig, opts: RayOptions) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        lifecycle, metrics = _load(replace(cfg, batch_workers=1, cache_bytes=64 << 20), (ADMIN,))
        self.registry = lifecycle.require().registry
        self.servicer = AdminServicer(lifecycle, metrics, cfg.device)
        self._lock = threading.Lock()
        self._reports: dict[str, tuple[float, dict]] = {}  # replica -> (when, its cache stats)
        self._fresh_s = 5 * opts.sync_s

    def call(self, method: str, request: bytes) -> tuple[str, bytes, dict[str, str]]:
        """An AdminService method (serialized) -> (code name or "", response or the serialized
        google.rpc.Status, active versions)."""
        kind = getattr(pb, f"{_ADMIN_REQUESTS[method]}")
        with self._lock:  # the store may have changed under another writer: look first
            self.registry.sync_store()
            code, payload = _invoke(getattr(self.servicer, method), kind.FromString(request))
            if method == "ServerInfo" and not code:
                payload = self._with_replicas(pb.ServerInfoResponse.FromString(payload)).SerializeToString()
            return code, payload, self._active()

    def report(self, replica: str, stats: dict) -> None:
        self._reports[replica] = (time.monotonic(), stats)

    def _with_replicas(self, info: pb.ServerInfoResponse) -> pb.ServerInfoResponse:
        """ServerInfo's cache figures summed over the replicas that reported lately (not the admin's)."""
        now = time.monotonic()
        live = [stats for when, stats in self._reports.values() if now - when < self._fresh_s]
        fields = ("capacity_bytes", "resident_bytes", "entries", "hits", "misses", "evictions")
        info.cache.CopyFrom(pb.CacheStats(**{f: sum(s[f] for s in live) for f in fields}))
        info.versions["serve.replicas_reporting"] = str(len(live))
        return info

    def active_versions(self) -> dict[str, str]:
        with self._lock:
            self.registry.sync_store()
            return self._active()

    def _active(self) -> dict[str, str]:
        return {s.name: s.active_version for s in self.registry.list() if s.active_version}
