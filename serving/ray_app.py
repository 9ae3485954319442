"""The landmarks server on Ray Serve (`landmarks serve-ray`): many replicas, each request routed to
a replica that already holds its category.

    client --landmarks.v1 / grpc.health.v1--> Ray Serve's gRPC proxy (port N, every node)
        --> Ingress: reads the category from the request, names the model "category@version"
            --handle.options(multiplexed_model_id=...)--> Replica (x replicas): the single server's
                services (core, backend, FoldedModels, registry, engine, batcher) and its servicers;
                folds a category on demand, keeps at most N folded (Ray's per-replica LRU)
            --> Admin (one replica): the store's only writer, the single server's AdminServicer

Ray Serve's multiplexing routes a request whose model id a replica already holds to that replica
(else to the least loaded one, which folds it); clients send the category in the request as
always, so the Ingress sets the model id. The proxy carries our services unchanged: it calls the
Ingress method named like the RPC, and a status code set on the context is what the client gets.

Admin across replicas: the Admin deployment validates and writes the shared store (a directory
every replica can read: one machine, or a shared volume) exactly as `landmarks serve` does;
each replica re-reads the store every `sync_s` seconds (`AdapterRegistry.sync_store`), and at
once when asked for a category or version it does not know, so a registration is served by the
next request and an unregistered version stops being served within `sync_s`.

Every response carries trailing metadata `landmarks-replica` (which replica answered) and
`landmarks-held` ("1": that replica already held the category's folded model, "0": it folded it
for this request); Ray's metrics have the same as `landmarks_multiplex_requests{held}`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, replace

import grpc
from grpc_health.v1 import health_pb2
from ray import serve
from ray.exceptions import RayError, RayTaskError

from landmarks.v1 import landmarks_pb2 as pb
from serving.config import ServerConfig
from serving.errors import ServingError
from serving.inputs import RequestLimits
from serving.metrics import Metrics
from serving.names import CATEGORY_RE, VERSION_RE
from serving.servicer import AdminServicer, LandmarkServicer
from serving.services import Lifecycle, load_services
from serving.work import LeadFirstExecutor

__all__ = ["APP_NAME", "SERVICER_FUNCTIONS", "RayOptions", "app_builder", "build_app", "model_id"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode
APP_NAME = "landmarks"
INFERENCE, ADMIN = (pb.DESCRIPTOR.services_by_name[n].full_name for n in ("LandmarkService", "AdminService"))
# what Ray's gRPC proxy serves (each import path is resolved in the proxy's process)
SERVICER_FUNCTIONS = [
    "landmarks.v1.landmarks_pb2_grpc.add_LandmarkServiceServicer_to_server",
    "landmarks.v1.landmarks_pb2_grpc.add_AdminServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
_ITEM_RE = re.compile(r"^requests\[(\d+)\]\.")


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
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """What the servicers use of a gRPC context, for a call that reached this replica through Ray
    (Ray's proxy keeps the client's deadline and cancellation to itself)."""

    def time_remaining(self) -> None:
        return None

    def add_callback(self, callback) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str):
        raise _Aborted(code, details)


def _invoke(method, request) -> tuple[str, bytes | str]:
    """A servicer method on `request` -> ("", response bytes) or (status code name, details)."""
    try:
        return "", method(request, _Context()).SerializeToString()
    except _Aborted as exc:
        return exc.code.name, exc.details


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

    async def detect(self, method: str, request: bytes) -> tuple[str, bytes | str, bool, str]:
        """Detect or DetectBatch (serialized) -> (code name or "", response bytes or details, whether
        this replica already held the model, this replica's name)."""
        mid = serve.get_multiplexed_model_id()
        held = mid in self._held
        if mid:
            try:
                await self.get_model(mid)
            except ServingError as exc:
                return exc.code.name, exc.message, held, self.name
        parse = pb.DetectRequest if method == "Detect" else pb.DetectBatchRequest
        call = getattr(self.servicer, method)
        code, payload = await asyncio.wrap_future(self._executor.submit(_invoke, call, parse.FromString(request)))
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

    def call(self, method: str, request: bytes) -> tuple[str, bytes | str, dict[str, str]]:
        """An AdminService method (serialized) -> (code name or "", response or details, active versions)."""
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


_ADMIN_REQUESTS = {"RegisterAdapter": "RegisterAdapterRequest", "SetActiveVersion": "SetActiveVersionRequest",
                   "UnregisterAdapter": "UnregisterAdapterRequest", "ListCategories": "ListCategoriesRequest",
                   "ServerInfo": "ServerInfoRequest"}
_ADMIN_RESPONSES = {"RegisterAdapter": pb.RegisterAdapterResponse, "SetActiveVersion": pb.CategoryInfo,
                    "UnregisterAdapter": pb.UnregisterAdapterResponse, "ListCategories": pb.ListCategoriesResponse,
                    "ServerInfo": pb.ServerInfoResponse}


# ------------------------------------------------------------------------------------ ingress
class _Failed(Exception):
    """Raised after setting the status on Ray's gRPC context: the proxy answers with that status."""


def _fail(grpc_context, code: str | grpc.StatusCode, details: str):
    grpc_context.set_code(code if isinstance(code, grpc.StatusCode) else Code[code])
    grpc_context.set_details(details)
    raise _Failed(details)


class Ingress:
    """The methods Ray's gRPC proxy calls by RPC name: landmarks.v1 and grpc.health.v1."""

    def __init__(self, replicas, admin, opts: RayOptions, max_batch_items: int) -> None:
        self.replicas, self.admin, self.opts = replicas, admin, opts
        self.max_batch_items = max_batch_items
        self._active: dict[str, str] = {}
        self._refreshed = 0.0
        self.served = {"held": 0, "folded": 0}
        try:
            from ray.serve.metrics import Counter

            self._counter = Counter("landmarks_multiplex_requests", "Detect items by whether the replica "
                                    "that served them already held the category", tag_keys=("held",))
        except Exception:  # noqa: BLE001  metrics are optional
            self._counter = None

    async def _refresh(self) -> None:
        """Re-read the active versions every sync_s, in the background: requests route by the last known."""
        if time.monotonic() - self._refreshed > self.opts.sync_s:
            self._refreshed = time.monotonic()
            self._reading = asyncio.get_running_loop().create_task(self._read_active())  # (kept: not collected)

    async def _read_active(self) -> None:
        try:
            self._active = await self.admin.active_versions.remote()
        except RayError:
            log.warning("could not read the active versions; routing by the last known", exc_info=True)

    async def _route(self, method: str, request, mid: str) -> tuple[str, bytes | str, bool, str]:
        try:
            return await self.replicas.options(multiplexed_model_id=mid).detect.remote(
                method, request.SerializeToString())
        except RayTaskError:
            log.exception("replica failed")
            return "INTERNAL", "internal error in a replica; see the Ray logs", False, ""
        except RayError as exc:  # the replica died or is unreachable: another one will take a retry
            why = f"the replica serving {mid or 'this request'} went away ({type(exc).__name__}); retry"
            return "UNAVAILABLE", why, False, ""

    def _mid(self, req: pb.DetectRequest) -> str:
        return model_id(req.category, req.version or self._active.get(req.category, ""))

    def _count(self, held: bool, n: int = 1) -> None:
        self.served["held" if held else "folded"] += n
        if self._counter is not None:
            self._counter.inc(n, tags={"held": "1" if held else "0"})

    async def Detect(self, request: pb.DetectRequest, grpc_context) -> pb.DetectResponse:
        await self._refresh()
        code, payload, held, replica = await self._route("Detect", request, self._mid(request))
        grpc_context.set_trailing_metadata([("landmarks-replica", replica), ("landmarks-held", str(int(held)))])
        if code:
            _fail(grpc_context, code, payload)
        self._count(held)
        return pb.DetectResponse.FromString(payload)

    async def DetectBatch(self, request: pb.DetectBatchRequest, grpc_context) -> pb.DetectBatchResponse:
        n = len(request.requests)
        if n > self.max_batch_items:
            _fail(grpc_context, Code.INVALID_ARGUMENT, f"requests: {n} items, over this server's limit of "
                                                       f"{self.max_batch_items}; split the batch")
        await self._refresh()
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(request.requests):
            groups.setdefault(self._mid(item), []).append(i)
        # one sub-batch per model, side by side, each to a replica that holds its category
        calls = [self._route("DetectBatch", pb.DetectBatchRequest(requests=[request.requests[i] for i in idx]), mid)
                 for mid, idx in groups.items()]
        results = await asyncio.gather(*calls)
        out: list[pb.DetectResponse | None] = [None] * n
        errors = []
        metadata = []
        for idx, (code, payload, held, replica) in zip(groups.values(), results):
            metadata.append(("landmarks-replica", replica))
            metadata.append(("landmarks-held", str(int(held))))
            if code:
                # the item's index in its sub-batch -> in the client's batch; an error about the whole
                # group (its category, from folding) is about its first item, as the single server says
                m = _ITEM_RE.match(payload)
                first = idx[int(m.group(1))] if m and int(m.group(1)) < len(idx) else idx[0]
                details = f"requests[{first}]." + (payload[m.end():] if m else payload)
                errors.append((first, code, details))
                continue
            self._count(held, len(idx))
            for i, r in zip(idx, pb.DetectBatchResponse.FromString(payload).responses):
                out[i] = r
        grpc_context.set_trailing_metadata(metadata)
        if errors:
            _, code, details = min(errors)
            _fail(grpc_context, code, details)
        return pb.DetectBatchResponse(responses=out)

    async def _admin(self, method: str, request, grpc_context):
        try:
            code, payload, active = await self.admin.call.remote(method, request.SerializeToString())
        except RayError as exc:
            _fail(grpc_context, Code.UNAVAILABLE, f"the admin replica is unavailable ({type(exc).__name__}); retry")
        self._active, self._refreshed = active, time.monotonic()
        if code:
            _fail(grpc_context, code, payload)
        return _ADMIN_RESPONSES[method].FromString(payload)

    async def RegisterAdapter(self, request, grpc_context):
        return await self._admin("RegisterAdapter", request, grpc_context)

    async def SetActiveVersion(self, request, grpc_context):
        return await self._admin("SetActiveVersion", request, grpc_context)

    async def UnregisterAdapter(self, request, grpc_context):
        return await self._admin("UnregisterAdapter", request, grpc_context)

    async def ListCategories(self, request, grpc_context):
        return await self._admin("ListCategories", request, grpc_context)

    async def ServerInfo(self, request, grpc_context):
        import ray

        info = await self._admin("ServerInfo", request, grpc_context)
        info.versions["ray"] = ray.__version__
        return info

    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context):
        if request.service not in ("", INFERENCE, ADMIN):
            _fail(grpc_context, Code.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Watch(self, request, grpc_context):
        _fail(grpc_context, Code.UNIMPLEMENTED, "Watch is not served through Ray Serve; poll Check")

    def multiplex_counts(self) -> dict[str, int]:
        """Detect items answered by a replica that held their category, and by one that folded it."""
        return dict(self.served)


# ---------------------------------------------------------------------------------- the app
def build_app(cfg: ServerConfig, opts: RayOptions):
    """The Serve application: Ingress -> (Replica x N, Admin x 1)."""
    threads = max(1, int(opts.replica_cpus))
    replica_cfg = replace(cfg, torch_threads=cfg.torch_threads or threads,
                          batch_workers=min(cfg.batch_workers, threads))
    scaling: dict = {"num_replicas": opts.replicas}
    if opts.max_replicas is not None:
        scaling = {"autoscaling_config": {"min_replicas": opts.min_replicas, "max_replicas": opts.max_replicas,
                                          "target_ongoing_requests": opts.target_ongoing_requests}}
    env = {"runtime_env": {"env_vars": {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "20000")}}}
    # admin and ingress take no CPU slot: replicas get the cluster's cores
    admin = serve.deployment(Admin, name="LandmarkAdmin").options(
        num_replicas=1, graceful_shutdown_timeout_s=5, ray_actor_options={"num_cpus": 0, **env}).bind(cfg, opts)
    replicas = serve.deployment(Replica, name="LandmarkReplica").options(
        max_ongoing_requests=opts.max_ongoing_requests,
        ray_actor_options={"num_cpus": opts.replica_cpus, "num_gpus": opts.replica_gpus, **env},
        health_check_period_s=2, graceful_shutdown_timeout_s=5, **scaling,
    ).bind(replica_cfg, opts, admin)
    ingress = serve.deployment(Ingress, name="LandmarkIngress").options(
        num_replicas=1, max_ongoing_requests=1000, graceful_shutdown_timeout_s=5,
        ray_actor_options={"num_cpus": 0}).bind(
        replicas, admin, opts, cfg.max_batch_items)
    return ingress


def app_builder(args: dict):
    """For a Serve config file (KubeRay's serveConfigV2, `serve run`): `import_path:
    serving.ray_app:app_builder` with `args` naming ServerConfig fields (adapters_dir, device, backend,
    cache_bytes ...) and RayOptions fields (replicas, max_categories_per_replica, replica_gpus ...)."""
    import dataclasses

    server_fields = {f.name for f in dataclasses.fields(ServerConfig)}
    ray_fields = {f.name for f in dataclasses.fields(RayOptions)}
    unknown = set(args) - server_fields - ray_fields
    if unknown:
        raise ValueError(f"unknown args {sorted(unknown)}; use ServerConfig or RayOptions field names")
    cfg = ServerConfig(**{k: v for k, v in args.items() if k in server_fields})
    return build_app(cfg, RayOptions(**{k: v for k, v in args.items() if k in ray_fields}))
