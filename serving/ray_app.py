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
Ingress method named like the RPC, and a status code set on the context is what the client gets, with
the error's google.rpc.Status details in the trailer as `landmarks serve` sends them (`_answers`); a
DetectBatch item's index is renumbered from its replica's sub-batch into the client's batch
(`serving.errors.renumber`).

Admin across replicas: the Admin deployment validates and writes the shared store (a directory
every replica can read: one machine, or a shared volume) exactly as `landmarks serve` does;
each replica re-reads the store every `sync_s` seconds (`AdapterRegistry.sync_store`), and at
once when asked for a category or version it does not know, so a registration is served by the
next request and an unregistered version stops being served within `sync_s`.

Tokens and --no-admin are `landmarks serve`'s (serving.auth), checked by the Ingress on the
`authorization` metadata the proxy passes on. Not carried through Ray's proxy: TLS (terminate it in
front of the proxies, e.g. at the load balancer) and the client's deadline (a replica computes a
request whose client gave up).

Every response carries trailing metadata `landmarks-replica` (which replica answered) and
`landmarks-held` ("1": that replica already held the category's folded model, "0": it folded it
for this request); Ray's metrics have the same as `landmarks_multiplex_requests{held}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from dataclasses import replace

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from ray import serve
from ray.exceptions import RayError, RayTaskError

from landmarks.v1 import landmarks_pb2 as pb
from serving.auth import authorize, metadata_token
from serving.config import ServerConfig
from serving.errors import DETAILS_KEY, Reason, ServingError, renumber
from serving.ray_replicas import Admin, RayOptions, Replica, model_id

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


_ADMIN_RESPONSES = {"RegisterAdapter": pb.RegisterAdapterResponse, "SetActiveVersion": pb.CategoryInfo,
                    "UnregisterAdapter": pb.UnregisterAdapterResponse, "ListCategories": pb.ListCategoriesResponse,
                    "ServerInfo": pb.ServerInfoResponse}


# ------------------------------------------------------------------------------------ ingress
class _Failed(Exception):
    """Raised after setting the status on Ray's gRPC context (`_fail`); `_answers` turns it into the answer."""


def _answers(response_type):
    """An ingress method that ends with `_fail` returns an empty `response_type` instead of raising: Ray's
    proxy sends the trailing metadata (the error's details) only with an answer, while the status set on
    the context is what the client gets either way (a client never sees the empty message)."""
    def wrap(method):
        @functools.wraps(method)
        async def call(self, request, grpc_context):
            try:
                return await method(self, request, grpc_context)
            except _Failed:
                return response_type()
        return call
    return wrap


def _fail(grpc_context, error: ServingError | status_pb2.Status, metadata=()):
    """Answer with `error` (or a replica's google.rpc.Status): code, message, and the details in the
    grpc-status-details-bin trailer, after `metadata`."""
    status = error.status() if isinstance(error, ServingError) else error
    grpc_context.set_code(Code[code_pb2.Code.Name(status.code)])  # (google.rpc.Code names gRPC's codes)
    grpc_context.set_details(status.message)
    grpc_context.set_trailing_metadata([*metadata, (DETAILS_KEY, status.SerializeToString())])
    raise _Failed(status.message)


def _item_index(status: status_pb2.Status) -> int | None:
    """The sub-batch item a replica's DetectBatch error is about (ErrorInfo metadata "index")."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.metadata.get("index", "").isdigit():
                return int(info.metadata["index"])
    return None


class Ingress:
    """The methods Ray's gRPC proxy calls by RPC name: landmarks.v1 and grpc.health.v1."""

    def __init__(self, replicas, admin, opts: RayOptions, max_batch_items: int, admin_token: str | None = None,
                 inference_token: str | None = None, enable_admin: bool = True) -> None:
        self.replicas, self.admin, self.opts = replicas, admin, opts
        self.max_batch_items = max_batch_items
        self._tokens, self._enable_admin = (admin_token, inference_token), enable_admin
        self._active: dict[str, str] = {}
        self._refreshed = 0.0
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

    async def _route(self, method: str, request, mid: str) -> tuple[str, bytes, bool, str]:
        """-> (code name or "", response bytes or a serialized google.rpc.Status, held, replica)."""
        try:
            return await self.replicas.options(multiplexed_model_id=mid).detect.remote(
                method, request.SerializeToString())
        except RayTaskError:
            log.exception("replica failed")
            error = ServingError(Code.INTERNAL, Reason.INTERNAL, "internal error in a replica; see the Ray logs")
        except RayError as exc:  # the replica died or is unreachable: another one will take a retry
            error = ServingError(Code.UNAVAILABLE, Reason.SERVER_UNAVAILABLE,
                                 f"the replica serving {mid or 'this request'} went away ({type(exc).__name__}); retry")
        return error.code.name, error.status().SerializeToString(), False, ""

    def _allow(self, plane: str, grpc_context) -> None:
        """`landmarks serve`'s rules (serving.auth): a token per plane, and no admin calls with --no-admin."""
        if plane == "admin" and not self._enable_admin:
            _fail(grpc_context, ServingError(Code.UNIMPLEMENTED, Reason.ADMIN_DISABLED,
                                             "this server does not serve the admin service (--no-admin)"))
        refusal = authorize(plane, metadata_token(grpc_context.invocation_metadata()), *self._tokens)
        if refusal is not None:
            _fail(grpc_context, refusal)

    def _mid(self, req: pb.DetectRequest) -> str:
        return model_id(req.category, req.version or self._active.get(req.category, ""))

    def _count(self, held: bool, n: int = 1) -> None:
        if self._counter is not None:
            self._counter.inc(n, tags={"held": "1" if held else "0"})

    @_answers(pb.DetectResponse)
    async def Detect(self, request: pb.DetectRequest, grpc_context) -> pb.DetectResponse:
        self._allow("inference", grpc_context)
        await self._refresh()
        code, payload, held, replica = await self._route("Detect", request, self._mid(request))
        metadata = [("landmarks-replica", replica), ("landmarks-held", str(int(held)))]
        if code:
            _fail(grpc_context, status_pb2.Status.FromString(payload), metadata)
        grpc_context.set_trailing_metadata(metadata)
        self._count(held)
        return pb.DetectResponse.FromString(payload)

    @_answers(pb.DetectBatchResponse)
    async def DetectBatch(self, request: pb.DetectBatchRequest, grpc_context) -> pb.DetectBatchResponse:
        self._allow("inference", grpc_context)
        n = len(request.requests)
        if n > self.max_batch_items:
            _fail(grpc_context, ServingError(Code.INVALID_ARGUMENT, Reason.BATCH_TOO_LARGE,
                                             f"{n} items, over this server's limit of {self.max_batch_items}; "
                                             "split the batch", field="requests"))
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
                status = status_pb2.Status.FromString(payload)
                old = _item_index(status)
                first = idx[old] if old is not None and old < len(idx) else idx[0]
                errors.append((first, renumber(status, first, old if old is not None and old < len(idx) else None)))
                continue
            self._count(held, len(idx))
            for i, r in zip(idx, pb.DetectBatchResponse.FromString(payload).responses):
                out[i] = r
        if errors:
            _fail(grpc_context, min(errors, key=lambda e: e[0])[1], metadata)
        grpc_context.set_trailing_metadata(metadata)
        return pb.DetectBatchResponse(responses=out)

    async def _admin(self, method: str, request, grpc_context):
        self._allow("admin", grpc_context)
        try:
            code, payload, active = await self.admin.call.remote(method, request.SerializeToString())
        except RayError as exc:
            _fail(grpc_context, ServingError(Code.UNAVAILABLE, Reason.SERVER_UNAVAILABLE,
                                             f"the admin replica is unavailable ({type(exc).__name__}); retry"))
        self._active, self._refreshed = active, time.monotonic()
        if code:
            _fail(grpc_context, status_pb2.Status.FromString(payload))
        return _ADMIN_RESPONSES[method].FromString(payload)

    @_answers(pb.RegisterAdapterResponse)
    async def RegisterAdapter(self, request, grpc_context):
        return await self._admin("RegisterAdapter", request, grpc_context)

    @_answers(pb.CategoryInfo)
    async def SetActiveVersion(self, request, grpc_context):
        return await self._admin("SetActiveVersion", request, grpc_context)

    @_answers(pb.UnregisterAdapterResponse)
    async def UnregisterAdapter(self, request, grpc_context):
        return await self._admin("UnregisterAdapter", request, grpc_context)

    @_answers(pb.ListCategoriesResponse)
    async def ListCategories(self, request, grpc_context):
        return await self._admin("ListCategories", request, grpc_context)

    @_answers(pb.ServerInfoResponse)
    async def ServerInfo(self, request, grpc_context):
        import ray

        info = await self._admin("ServerInfo", request, grpc_context)
        info.versions["ray"] = ray.__version__
        return info

    @_answers(health_pb2.HealthCheckResponse)
    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context):
        if request.service not in ("", INFERENCE, ADMIN):
            _fail(grpc_context, ServingError(Code.NOT_FOUND, Reason.REQUEST_INVALID,
                                             f"unknown service {request.service!r}", field="service"))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Watch(self, request, grpc_context):
        _fail(grpc_context, ServingError(Code.UNIMPLEMENTED, Reason.REQUEST_INVALID,
                                         "Watch is not served through Ray Serve; poll Check"))


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
        replicas, admin, opts, cfg.max_batch_items, cfg.admin_token, cfg.inference_token, cfg.enable_admin)
    return ingress


def app_builder(args: dict):
    """For a Serve config file (KubeRay's serveConfigV2, `serve run`): `import_path:
    serving.ray_app:app_builder` with `args` naming ServerConfig fields (adapters_dir, device, backend,
    cache_bytes ...) and RayOptions fields (replicas, max_categories_per_replica, replica_gpus ...)."""

    server_fields = {f.name for f in dataclasses.fields(ServerConfig)}
    ray_fields = {f.name for f in dataclasses.fields(RayOptions)}
    unknown = set(args) - server_fields - ray_fields
    if unknown:
        raise ValueError(f"unknown args {sorted(unknown)}; use ServerConfig or RayOptions field names")
    cfg = ServerConfig(**{k: v for k, v in args.items() if k in server_fields})
    return build_app(cfg, RayOptions(**{k: v for k, v in args.items() if k in ray_fields}))
