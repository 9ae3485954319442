"""The gRPC front of `landmarks serve-ray`: the port clients call, served by this process with the
single server's gRPC stack (serving.server: TLS, the token interceptor, health, reflection v1 and
v1alpha, message limits), bound to --host (127.0.0.1 unless told otherwise). Each call goes through
the `Router` straight to the replicas' deployment handles, carrying the client's deadline.

    client --TLS, tokens--> front (this process, --host:--port) --Ray handles--> replicas / admin
                              AdaptationService: jobs as Ray tasks (serving.ray_jobs)

Why a front of our own rather than Ray Serve's gRPC proxy: the proxy binds every interface, has no
TLS and drops the client's deadline. Ray's proxy is not started by `serve-ray`; Serve config files
(the KubeRay manifest) can still use it with the Ingress deployment (serving.ray_app).
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc
from serving.calls import remaining_time
from serving.config import ServerConfig
from serving.errors import DETAILS_KEY
from serving.ray_router import ADMIN_RESPONSES, Answer, Router
from serving.server import add_health_and_reflection, grpc_server, listen

__all__ = ["RayFront", "start_front"]

log = logging.getLogger(__name__)
INFERENCE, ADMIN, ADAPTATION = (pb.DESCRIPTOR.services_by_name[n].full_name
                                for n in ("LandmarkService", "AdminService", "AdaptationService"))


def _reply(answer: Answer, response_type, context: grpc.ServicerContext):
    if answer.code:
        status = answer.status()
        context.abort_with_status(_Status(grpc.StatusCode[answer.code], status.message,
                                          (*answer.metadata, (DETAILS_KEY, answer.payload))))
    if answer.metadata:
        context.set_trailing_metadata(answer.metadata)
    return response_type.FromString(answer.payload)


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata) -> None:
        self.code, self.details, self.trailing_metadata = code, details, tuple(trailing_metadata)


class _Inference(pb_grpc.LandmarkServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    def Detect(self, request, context):
        return _reply(self.router.detect(request, remaining_time(context)), pb.DetectResponse, context)

    def DetectBatch(self, request, context):
        return _reply(self.router.detect_batch(request, remaining_time(context)), pb.DetectBatchResponse, context)


class _Admin(pb_grpc.AdminServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    def _call(self, method: str, request, context):
        return _reply(self.router.admin_call(method, request, remaining_time(context)),
                      ADMIN_RESPONSES[method], context)

    def RegisterAdapter(self, request, context):
        return self._call("RegisterAdapter", request, context)

    def SetActiveVersion(self, request, context):
        return self._call("SetActiveVersion", request, context)

    def UnregisterAdapter(self, request, context):
        return self._call("UnregisterAdapter", request, context)

    def ListCategories(self, request, context):
        return self._call("ListCategories", request, context)

    def ServerInfo(self, request, context):
        return self._call("ServerInfo", request, context)


class RayFront:
    """The front's gRPC server, started; `stop` reports NOT_SERVING, then gives calls `grace` seconds."""

    def __init__(self, server: grpc.Server, port: int, health_servicer, router: Router, adaptations) -> None:
        self.server, self.port, self.health, self.router = server, port, health_servicer, router
        self.adaptations = adaptations

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.adaptations is not None:
            self.adaptations.close()  # running jobs' tasks are cancelled; the next start resumes them
        self.router.close()


def start_front(cfg: ServerConfig, port: int, replicas, admin, sync_s: float, workers: int = 64,
                adaptation_gpus: float = 0.0) -> RayFront:
    """Serve landmarks.v1 on cfg.host:`port` (TLS and tokens as `cfg` says) over the deployment handles
    `replicas` and `admin`, with adaptation jobs as Ray tasks (`cfg.adaptation_workers` at once, 0: off).
    Raises OSError when the address cannot be bound."""
    from serving.adaptation_servicer import AdaptationServicer
    from serving.adaptations import Adaptations
    from serving.ray_jobs import AdminRegistry, RayTasks

    router = Router(replicas, admin, sync_s, cfg.max_batch_items)
    # each handler thread waits on a replica; `workers` bounds the calls in flight, then gRPC refuses
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="landmarks-front")
    server = grpc_server(cfg, pool, cfg.max_message_bytes, workers + cfg.max_queue)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    services = [INFERENCE]
    pb_grpc.add_LandmarkServiceServicer_to_server(_Inference(router), server)
    adaptations = None
    if cfg.enable_admin:  # else AdminService is not served: UNIMPLEMENTED, as from `landmarks serve --no-admin`
        pb_grpc.add_AdminServiceServicer_to_server(_Admin(router), server)
        registry = AdminRegistry(router)
        adaptations = Adaptations(cfg.adapters_dir, cfg.resolved_core_path, cfg.adaptation, lambda: registry,
                                  trainer=RayTasks(adaptation_gpus))
        # uploads and watch streams last minutes: threads of their own, not Detect's handler threads
        pool_jobs = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="landmarks-adaptation")
        pb_grpc.add_AdaptationServiceServicer_to_server(AdaptationServicer(adaptations, pool_jobs), server)
        services += [ADMIN, ADAPTATION]
    add_health_and_reflection(server, health_servicer, services)
    try:
        bound = listen(server, cfg, port)
    except OSError:
        if adaptations is not None:
            adaptations.close()
        router.close()
        raise
    server.start()
    for name in ("", *services):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RayFront(server, bound, health_servicer, router, adaptations)
