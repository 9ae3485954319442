"""The landmarks server on Ray Serve (`landmarks serve-ray`): many replicas, each request routed to
a replica that already holds its category.

    client --landmarks.v1--> the front (serving.ray_front: this command's process, --host:--port,
        TLS, tokens, deadlines) or Ray Serve's gRPC proxy (Serve config files: the Ingress below)
        --> Router (serving.ray_router): names the model "category@version"
            --handle.options(multiplexed_model_id=...)--> Replica (x replicas): the single server's
                services (core, backend, FoldedModels, registry, engine, batcher) and its servicers;
                folds a category on demand, keeps at most N folded (Ray's per-replica LRU)
            --> Admin (one replica): the store's only writer, the single server's AdminServicer

Ray Serve's multiplexing routes a request whose model id a replica already holds to that replica
(else to the least loaded one, which folds it); clients send the category in the request as
always, so the router sets the model id.

Admin across replicas: the Admin deployment validates and writes the shared store (a directory
every replica can read: one machine, or a shared volume) exactly as `landmarks serve` does;
each replica re-reads the store every `sync_s` seconds (`AdapterRegistry.sync_store`), and at
once when asked for a category or version it does not know, so a registration is served by the
next request and an unregistered version stops being served within `sync_s`.

Ray's gRPC proxy path (`app_builder`, for KubeRay's serveConfigV2): the proxy calls the Ingress
method named like the RPC; tokens and --no-admin are checked by the Ingress on the `authorization`
metadata the proxy passes on. That proxy listens on every interface without TLS and does not pass the
client's deadline on, so keep it inside the cluster's network, or run the front instead.

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
from dataclasses import replace

import grpc
from grpc_health.v1 import health_pb2
from ray import serve

from landmarks.v1 import landmarks_pb2 as pb
from serving.auth import authorize, metadata_token
from serving.config import ServerConfig
from serving.errors import DETAILS_KEY, Reason, ServingError
from serving.ray_replicas import Admin, RayOptions, Replica, model_id
from serving.ray_router import ADMIN_RESPONSES, Answer, Router

__all__ = ["APP_NAME", "SERVICER_FUNCTIONS", "RayOptions", "app_builder", "build_app", "handles", "model_id"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode
APP_NAME = "landmarks"
REPLICA_DEPLOYMENT, ADMIN_DEPLOYMENT = "LandmarkReplica", "LandmarkAdmin"
INFERENCE, ADMIN = (pb.DESCRIPTOR.services_by_name[n].full_name for n in ("LandmarkService", "AdminService"))
# what Ray's gRPC proxy serves (each import path is resolved in the proxy's process)
SERVICER_FUNCTIONS = [
    "landmarks.v1.landmarks_pb2_grpc.add_LandmarkServiceServicer_to_server",
    "landmarks.v1.landmarks_pb2_grpc.add_AdminServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]


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


def _fail(grpc_context, error: ServingError | Answer):
    """Answer with `error`: code, message, and the google.rpc.Status details in the
    grpc-status-details-bin trailer, after the answer's own metadata."""
    answer = Answer.error(error) if isinstance(error, ServingError) else error
    status = answer.status()
    grpc_context.set_code(Code[answer.code])
    grpc_context.set_details(status.message)
    grpc_context.set_trailing_metadata([*answer.metadata, (DETAILS_KEY, answer.payload)])
    raise _Failed(status.message)


class Ingress:
    """The methods Ray's gRPC proxy calls by RPC name (landmarks.v1 and grpc.health.v1), over the
    `Router`. Ray's proxy passes no deadline on: the Ingress cannot bound a replica's work by it."""

    def __init__(self, replicas, admin, opts: RayOptions, max_batch_items: int, admin_token: str | None = None,
                 inference_token: str | None = None, enable_admin: bool = True) -> None:
        self.router = Router(replicas, admin, opts.sync_s, max_batch_items)
        self._tokens, self._enable_admin = (admin_token, inference_token), enable_admin

    def _allow(self, plane: str, grpc_context) -> None:
        """`landmarks serve`'s rules (serving.auth): a token per plane, and no admin calls with --no-admin."""
        if plane == "admin" and not self._enable_admin:
            _fail(grpc_context, ServingError(Code.UNIMPLEMENTED, Reason.ADMIN_DISABLED,
                                             "this server does not serve the admin service (--no-admin)"))
        refusal = authorize(plane, metadata_token(grpc_context.invocation_metadata()), *self._tokens)
        if refusal is not None:
            _fail(grpc_context, refusal)

    @staticmethod
    def _reply(answer: Answer, response_type, grpc_context):
        if answer.code:
            _fail(grpc_context, answer)
        if answer.metadata:
            grpc_context.set_trailing_metadata(answer.metadata)
        return response_type.FromString(answer.payload)

    @_answers(pb.DetectResponse)
    async def Detect(self, request: pb.DetectRequest, grpc_context) -> pb.DetectResponse:
        self._allow("inference", grpc_context)
        answer = await asyncio.to_thread(self.router.detect, request)
        return self._reply(answer, pb.DetectResponse, grpc_context)

    @_answers(pb.DetectBatchResponse)
    async def DetectBatch(self, request: pb.DetectBatchRequest, grpc_context) -> pb.DetectBatchResponse:
        self._allow("inference", grpc_context)
        answer = await asyncio.to_thread(self.router.detect_batch, request)
        return self._reply(answer, pb.DetectBatchResponse, grpc_context)

    async def _admin(self, method: str, request, grpc_context):
        self._allow("admin", grpc_context)
        answer = await asyncio.to_thread(self.router.admin_call, method, request)
        return self._reply(answer, ADMIN_RESPONSES[method], grpc_context)

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
        return await self._admin("ServerInfo", request, grpc_context)

    @_answers(health_pb2.HealthCheckResponse)
    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context):
        if request.service not in ("", INFERENCE, ADMIN):
            _fail(grpc_context, ServingError(Code.NOT_FOUND, Reason.REQUEST_INVALID,
                                             f"unknown service {request.service!r}", field="service"))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Watch(self, request, grpc_context):
        _fail(grpc_context, ServingError(Code.UNIMPLEMENTED, Reason.REQUEST_INVALID,
                                         "Watch is not served through Ray Serve's proxy; poll Check"))

    def __del__(self) -> None:
        self.router.close()


# ---------------------------------------------------------------------------------- the app
def build_app(cfg: ServerConfig, opts: RayOptions, ingress: bool = True):
    """The Serve application: Ingress -> (Replica x N, Admin x 1), for Ray's gRPC proxy; without
    `ingress`, Replica x N (the root) and Admin x 1, called by the front (`serving.ray_front`)."""
    threads = max(1, int(opts.replica_cpus))
    replica_cfg = replace(cfg, torch_threads=cfg.torch_threads or threads,
                          batch_workers=min(cfg.batch_workers, threads))
    scaling: dict = {"num_replicas": opts.replicas}
    if opts.max_replicas is not None:
        scaling = {"autoscaling_config": {"min_replicas": opts.min_replicas, "max_replicas": opts.max_replicas,
                                          "target_ongoing_requests": opts.target_ongoing_requests}}
    # the replicas are new processes: glibc reads the arena cap from their environment (serving.memory)
    env = {"runtime_env": {"env_vars": {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "20000"),
                                        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX",
                                                                           str(max(1, int(opts.replica_cpus))))}}}
    # admin and ingress take no CPU slot: replicas get the cluster's cores
    admin = serve.deployment(Admin, name=ADMIN_DEPLOYMENT).options(
        num_replicas=1, graceful_shutdown_timeout_s=5, ray_actor_options={"num_cpus": 0, **env}).bind(cfg, opts)
    replicas = serve.deployment(Replica, name=REPLICA_DEPLOYMENT).options(
        max_ongoing_requests=opts.max_ongoing_requests,
        ray_actor_options={"num_cpus": opts.replica_cpus, "num_gpus": opts.replica_gpus, **env},
        health_check_period_s=2, graceful_shutdown_timeout_s=5, **scaling,
    ).bind(replica_cfg, opts, admin)
    if not ingress:
        return replicas
    return serve.deployment(Ingress, name="LandmarkIngress").options(
        num_replicas=1, max_ongoing_requests=1000, graceful_shutdown_timeout_s=5,
        ray_actor_options={"num_cpus": 0}).bind(
        replicas, admin, opts, cfg.max_batch_items, cfg.admin_token, cfg.inference_token, cfg.enable_admin)


def handles():
    """(replicas, admin): the deployment handles of the running application, for the front."""
    return (serve.get_deployment_handle(REPLICA_DEPLOYMENT, app_name=APP_NAME),
            serve.get_deployment_handle(ADMIN_DEPLOYMENT, app_name=APP_NAME))


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
