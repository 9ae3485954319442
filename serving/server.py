"""Assemble and run the gRPC server: inference + admin services, standard health and reflection,
Prometheus metrics, tokens and TLS. Everything it serves is built by `serving.services`.

    handle = build_server(cfg); handle.start(); ...; handle.shutdown()   # graceful

Shutdown (`ServerHandle.shutdown`, what SIGTERM does): health -> NOT_SERVING, new Detects are
refused with UNAVAILABLE, the batching queue flushes without waiting, the gRPC servers stop
accepting and give in-flight RPCs `grace_s` seconds, then cancel whatever is left (so a slow
client or a stuck request cannot hold shutdown), and the batch workers are stopped.

With `http_port`, the same services answer HTTP/JSON too, with a demo page at / (serving.http_api),
started and stopped with the gRPC servers.

Health (`grpc.health.v1`) reports NOT_SERVING until the core is loaded and the adapter store is
read, then SERVING for "" and both services. With `load_in_background` the core loads in a
thread after `build_server` returns (requests get UNAVAILABLE meanwhile); otherwise it loads
before, and a missing or broken core raises `CoreLoadError` with a message saying what to do.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc
from serving.adaptation_servicer import AdaptationServicer
from serving.adaptations import Adaptations
from serving.auth import TokenInterceptor
from serving.config import ServerConfig, join_host_port
from serving.inputs import RequestLimits
from serving.metrics import Metrics, start_metrics_server
from serving.reflection import enable_reflection
from serving.servicer import AdminServicer, LandmarkServicer
from serving.services import CoreLoadError, Lifecycle, Services, load_services
from serving.threads import handler_thread
from serving.work import LeadFirstExecutor

if TYPE_CHECKING:
    from serving.http_api import HttpPlane

__all__ = ["CoreLoadError", "ServerHandle", "add_health_and_reflection", "build_server", "grpc_server", "listen", "serve"]

log = logging.getLogger(__name__)
INFERENCE, ADMIN, ADAPTATION = (pb.DESCRIPTOR.services_by_name[name].full_name
                                for name in ("LandmarkService", "AdminService", "AdaptationService"))


@dataclass
class ServerHandle:
    config: ServerConfig
    server: grpc.Server
    port: int
    lifecycle: Lifecycle
    metrics: Metrics
    admin_server: grpc.Server | None = None  # AdminService on a port of its own (--admin-port)
    admin_port: int | None = None
    metrics_server: object | None = None
    metrics_port: int | None = None
    http: HttpPlane | None = None  # HTTP/JSON and the demo page (--http-port), same services
    adaptations: Adaptations | None = None  # adaptation jobs (HTTP /v1/adaptations, AdaptationService)

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    @property
    def services(self) -> Services:
        return self.lifecycle.require()

    @property
    def address(self) -> str:
        return join_host_port(self.config.host, self.port)

    def start(self) -> None:
        self.server.start()
        if self.admin_server is not None:
            self.admin_server.start()
        if self.http is not None:
            self.http.start()

    def shutdown(self, grace: float | None = None) -> bool:
        """Graceful stop (see the module docstring); True if in-flight work finished within grace."""
        grace = self.config.grace_s if grace is None else grace
        self.lifecycle.drain()
        if self.adaptations is not None:  # first: its watch streams end, and running jobs resume at the next start
            self.adaptations.close()
        # stop() cancels RPCs still running after `grace`; the event is set once they are gone
        stopping = [s.stop(grace=grace) for s in (self.server, self.admin_server) if s is not None]
        if self.http is not None:  # drains side by side with gRPC: uvicorn gives in-flight requests `grace`
            self.http.server.should_exit = True
        finished = all([event.wait(grace + 5.0) for event in stopping])  # noqa: C419  wait for each
        if self.http is not None:
            self.http.stop(grace)
        if self.lifecycle.services is not None:
            self.lifecycle.services.batcher.close(timeout=1.0)  # a forward still running after grace is abandoned
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        return bool(finished)


def grpc_server(cfg: ServerConfig, pool: futures.ThreadPoolExecutor, max_message_bytes: int,
                 max_rpcs: int) -> grpc.Server:
    # gRPC checks a message's length against the receive limit before it buffers it, so the limit
    # bounds the memory a client can make the server hold; it is per server, hence two servers
    # when admin has its own port (a 64 MB adapter must not open the inference port to 64 MB images)
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    interceptors = []
    if cfg.admin_token is not None or cfg.inference_token is not None:
        interceptors.append(TokenInterceptor(cfg.admin_token, cfg.inference_token))
    return grpc.server(pool, options=options, interceptors=interceptors, maximum_concurrent_rpcs=max_rpcs)


def listen(server: grpc.Server, cfg: ServerConfig, port: int) -> int:
    address = join_host_port(cfg.host, port)
    try:
        bound = (server.add_secure_port(address, _server_credentials(cfg)) if cfg.tls
                 else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {address} (port in use?)")
    return bound


def add_health_and_reflection(server: grpc.Server, health_servicer, services: list[str]) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(services + [health.SERVICE_NAME], server)


def _on_pool(servicer: LandmarkServicer, pool: futures.ThreadPoolExecutor) -> LandmarkServicer:
    """gRPC reads a per-method thread pool from the handler function's `experimental_thread_pool`."""
    for name in ("Detect", "DetectBatch"):
        method = getattr(servicer, name)
        call = functools.wraps(method)(lambda request, context, method=method: method(request, context))
        call.experimental_thread_pool = pool
        setattr(servicer, name, call)
    return servicer


def _lead_or_none(lifecycle: Lifecycle):
    def lead(fn, args):
        services = lifecycle.services
        return services.batcher.lead(fn, args) if services is not None else None
    return lead


def build_server(cfg: ServerConfig) -> ServerHandle:
    """Bind (not start) a server for `cfg`; see the module docstring for loading."""
    handlers = futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="landmarks",
                                          initializer=handler_thread, initargs=(cfg.handler_nice,))
    # beyond handler threads + the batching queue, gRPC itself answers RESOURCE_EXHAUSTED
    server = grpc_server(cfg, handlers, cfg.max_message_bytes, cfg.max_workers + cfg.max_queue)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    lifecycle = Lifecycle(health_servicer, (INFERENCE, ADMIN, ADAPTATION) if cfg.enable_admin else (INFERENCE,))
    metrics = Metrics(lambda: lifecycle.services)
    limits = RequestLimits(cfg.max_image_pixels, cfg.min_image_side, cfg.max_batch_items)
    landmarks = LandmarkServicer(lifecycle, limits, metrics)
    if cfg.lone_on_lead:  # a lone Detect runs whole on the lead batch worker (serving.batching)
        landmarks = _on_pool(landmarks, LeadFirstExecutor(_lead_or_none(lifecycle), handlers))
    pb_grpc.add_LandmarkServiceServicer_to_server(landmarks, server)
    # jobs train in child processes; a restart resumes the ones it interrupted (serving.adaptations)
    adaptations = Adaptations(cfg.adapters_dir, cfg.resolved_core_path, cfg.adaptation,
                              lambda: lifecycle.require().registry)
    # uploads and watch streams last minutes: threads of their own, not Detect's handler threads
    adaptation_pool = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="landmarks-adaptation")
    admin_server = None
    if cfg.enable_admin and cfg.admin_port is None:
        pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(lifecycle, metrics, cfg.device), server)
        pb_grpc.add_AdaptationServiceServicer_to_server(AdaptationServicer(adaptations, adaptation_pool), server)
        add_health_and_reflection(server, health_servicer, [INFERENCE, ADMIN, ADAPTATION])
    else:
        add_health_and_reflection(server, health_servicer, [INFERENCE])
        if cfg.enable_admin:
            admin_pool = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="landmarks-admin",
                                                    initializer=handler_thread)
            admin_server = grpc_server(cfg, admin_pool, cfg.admin_message_bytes, 16)
            pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(lifecycle, metrics, cfg.device), admin_server)
            pb_grpc.add_AdaptationServiceServicer_to_server(AdaptationServicer(adaptations, adaptation_pool), admin_server)
            add_health_and_reflection(admin_server, health_servicer, [ADMIN, ADAPTATION])
    if cfg.load_in_background:
        threading.Thread(target=_load, args=(cfg, lifecycle, metrics, False), name="landmarks-load",
                         daemon=True).start()
    try:
        if not cfg.load_in_background:
            _load(cfg, lifecycle, metrics, True)
        handle = ServerHandle(cfg, server, listen(server, cfg, cfg.port), lifecycle, metrics, admin_server,
                              adaptations=adaptations)
    except BaseException:
        adaptations.close()
        raise
    try:
        if admin_server is not None:
            handle.admin_port = listen(admin_server, cfg, cfg.admin_port)  # type: ignore[arg-type]
        if cfg.http_port is not None:
            try:  # FastAPI and uvicorn load only when asked for
                from serving.http_api import HttpPlane
            except ImportError as exc:
                raise OSError(f"--http-port needs FastAPI and uvicorn ({exc}); install them with: "
                              "pip install 'landmark-adapters[serve]'") from None

            handle.http = HttpPlane(cfg, lifecycle, limits, metrics, handle.adaptations)
        if cfg.metrics_port is not None:
            try:
                handle.metrics_server, handle.metrics_port = start_metrics_server(metrics, cfg.host, cfg.metrics_port)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {cfg.host}:{cfg.metrics_port}: {exc}") from None
    except OSError:
        if handle.adaptations is not None:
            handle.adaptations.close()
        server.stop(None)
        if admin_server is not None:
            admin_server.stop(None)
        if handle.http is not None:
            handle.http.socket.close()
        raise
    return handle


def _load(cfg: ServerConfig, lifecycle: Lifecycle, metrics: Metrics, reraise: bool) -> None:
    try:
        lifecycle.publish(load_services(cfg, metrics))
        # what loading made lives as long as the server, so the collector need not scan it: a full
        # collection over it (registrations trigger one now and then) added ~80 ms to one of them
        gc.freeze()
    except Exception as exc:
        lifecycle.fail(str(exc))  # requests answer UNAVAILABLE with it
        if reraise:
            raise


def _server_credentials(cfg: ServerConfig) -> grpc.ServerCredentials:
    try:
        key, cert = cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes()  # type: ignore[union-attr]
        ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
    except OSError as exc:
        raise OSError(f"cannot read TLS files: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def serve(cfg: ServerConfig) -> int:
    """Run until interrupted; SIGTERM / Ctrl-C shut down gracefully within `cfg.grace_s`."""
    import signal

    from serving.memory import cap_malloc_arenas

    cap_malloc_arenas()  # before the server's threads: a steadier RSS (serving.memory)
    handle = build_server(cfg)
    handle.start()
    log.info("listening on %s", handle.address)
    if cfg.admin_token is None and cfg.enable_admin and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the admin service is open to the network (no --admin-token-file, not --no-admin)")
    services = handle.lifecycle.services
    core = services.core.sha256[:12] if services is not None else "?"
    extra = f", admin on {join_host_port(cfg.host, handle.admin_port)}" if handle.admin_port is not None else ""
    if handle.http_port is not None:
        scheme = "https" if cfg.tls else "http"
        extra += f", HTTP/JSON and demo page on {scheme}://{join_host_port(cfg.host, handle.http_port)}/"
    extra += f", metrics on {cfg.host}:{handle.metrics_port}" if handle.metrics_port is not None else ""
    print(f"landmarks server listening on {handle.address} ({'TLS' if cfg.tls else 'plaintext'}, core {core}, "
          f"device {cfg.device}{extra})", flush=True)
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop.wait(1.0):
        pass
    log.info("stopping: health NOT_SERVING, finishing in-flight requests (%.1f s grace)", cfg.grace_s)
    finished = handle.shutdown()
    log.info("stopped%s", "" if finished else " (in-flight work cancelled after the grace period)")
    print("landmarks server stopped", flush=True)
    return 0
