"""Assemble the gRPC server: inference + admin services, standard health and reflection,
dynamic batching, Prometheus metrics, tokens and TLS.

    server, port = create_server(ServerConfig(port=0))   # binds, does not start
    server.start(); ...; server.stop(grace=5)
    handle = build_server(cfg); handle.server.start(); ...; handle.shutdown()   # graceful

Shutdown (`ServerHandle.shutdown`, what SIGTERM does): health -> NOT_SERVING, new Detects are
refused with UNAVAILABLE, the batching queue flushes without waiting, the gRPC server stops
accepting and gives in-flight RPCs `grace_s` seconds, then cancels whatever is left (so a slow
client or a stuck request cannot hold shutdown), and the batch workers are stopped.

Health (`grpc.health.v1`) reports NOT_SERVING until the core is loaded and the adapter store is
read, then SERVING for "" and both services. With `load_in_background` the core loads in a
thread after `create_server` returns (requests get UNAVAILABLE meanwhile); otherwise it loads
before, and a missing or broken core raises `CoreLoadError` with a message saying what to do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from landmarks.adapter_io import ArtifactError, Core, load_core
from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc
from serving.auth import TokenInterceptor
from serving.backend import Backend, make_backend
from serving.batching import BatchConfig, ComputeThreads, DynamicBatcher
from serving.config import ServerConfig, join_host_port
from serving.engine import InferenceEngine
from serving.errors import ServingError
from serving.folding import FoldedCache
from serving.metrics import Metrics, start_metrics_server
from serving.registry import AdapterRegistry
from serving.servicer import AdminServicer, LandmarkServicer
from serving.threads import DEFAULT_COMPUTE_THREADS, compute_thread, handler_thread, single_threaded

__all__ = ["CoreLoadError", "ServerHandle", "ServerState", "build_server", "create_server", "serve"]

log = logging.getLogger(__name__)
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["LandmarkService"].full_name,
    pb.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


class CoreLoadError(RuntimeError):
    pass


class ServerState:
    """What the servicers share; filled in once the core is loaded."""

    def __init__(self, cfg: ServerConfig, health_servicer: health.HealthServicer) -> None:
        self.cfg = cfg
        self.health = health_servicer
        self.core: Core | None = None
        self.backend: Backend | None = None
        self.cache: FoldedCache | None = None
        self.registry: AdapterRegistry | None = None
        self.engine: InferenceEngine | None = None
        self.batcher: DynamicBatcher | None = None
        self.metrics = Metrics(self)
        self.draining = False
        self.load_error: str = ""
        self.ready = False
        self.loaded = threading.Event()

    def _unavailable(self) -> ServingError:
        why = f"failed to load: {self.load_error}" if self.load_error else "is starting (loading the core)"
        return ServingError(grpc.StatusCode.UNAVAILABLE, f"server {why}")

    def require_engine(self) -> InferenceEngine:
        if not self.ready:
            raise self._unavailable()
        return self.engine  # type: ignore[return-value]

    def require_batcher(self) -> DynamicBatcher:
        if self.draining:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another replica")
        if not self.ready:
            raise self._unavailable()
        return self.batcher  # type: ignore[return-value]

    def require_registry(self) -> AdapterRegistry:
        if not self.ready:
            raise self._unavailable()
        return self.registry  # type: ignore[return-value]

    def set_health(self, status: int) -> None:
        for name in ("",) + SERVICE_NAMES:
            self.health.set(name, status)

    def load(self) -> None:
        cfg = self.cfg
        path = cfg.resolved_core_path
        try:
            single_threaded()  # loading runs here; forward passes run in the batch workers (serving.threads)
            if not path.is_file():
                raise CoreLoadError(
                    f"no core file at {path}. Train one (landmarks train-core ...) and copy its core.safetensors "
                    f"there, or point the server at one with --core FILE")
            try:
                core = load_core(path)
            except ArtifactError as exc:
                raise CoreLoadError(f"cannot load the core {path}: {exc}") from None
            backend = make_backend(cfg.backend, core, cfg.device)
            cache = FoldedCache(cfg.cache_bytes)
            registry = AdapterRegistry(core, backend, cache, cfg.adapters_dir, cfg.max_adapter_bytes,
                                       cfg.allowed_register_dirs)
            registry.load_store()
            self.core, self.backend, self.cache, self.registry = core, backend, cache, registry
            self.engine = InferenceEngine(registry, cache, backend)
            batching = BatchConfig(cfg.max_batch_size, cfg.max_queue_delay_ms, cfg.max_queue, cfg.batch_workers)
            threads = ComputeThreads.split(cfg.torch_threads or DEFAULT_COMPUTE_THREADS, batching.workers,
                                           compute_thread)
            self.batcher = DynamicBatcher(self.engine, batching, self.metrics, threads)
            self.ready = True
            self.set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("core %s loaded on %s; %d categories", core.sha256[:12], backend.device, len(registry.list()))
        except Exception as exc:
            self.load_error = str(exc)
            log.error("server failed to load: %s", exc)
            raise
        finally:
            self.loaded.set()


@dataclass
class ServerHandle:
    server: grpc.Server
    port: int
    state: ServerState
    metrics_port: int | None = None
    metrics_server: object | None = None
    admin_server: grpc.Server | None = None  # AdminService on a port of its own (--admin-port)
    admin_port: int | None = None

    def start(self) -> None:
        self.server.start()
        if self.admin_server is not None:
            self.admin_server.start()

    def shutdown(self, grace: float | None = None) -> bool:
        """Graceful stop (see the module docstring); True if in-flight work finished within grace."""
        state = self.state
        grace = state.cfg.grace_s if grace is None else grace
        state.draining = True
        state.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if state.batcher is not None:
            state.batcher.drain()
        # stop() cancels RPCs still running after `grace`; the event is set once they are gone
        stopping = [self.server.stop(grace=grace)]
        if self.admin_server is not None:
            stopping.append(self.admin_server.stop(grace=grace))
        finished = all([event.wait(grace + 5.0) for event in stopping])  # noqa: C419  wait for each
        if state.batcher is not None:
            state.batcher.close(timeout=1.0)  # a forward pass still running after grace is abandoned
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        return bool(finished)

    @property
    def address(self) -> str:
        return join_host_port(self.state.cfg.host, self.port)


class LeadFirstExecutor(futures.ThreadPoolExecutor):
    """Where gRPC runs Detect and DetectBatch: on the lead batch worker when that call would be the
    only one computing (`DynamicBatcher.try_lead`), else in the server's handler pool as usual.

    A lone request then decodes, runs its forward pass on all threads and answers in one thread:
    through the queue it crossed two thread hand-offs (handler -> worker -> handler), each a
    wake-up that costs a few hundred microseconds on this VM after idleness. Under load nothing
    changes: requests queue and batch. (gRPC's per-method `experimental_thread_pool` must be a
    ThreadPoolExecutor; this one starts no threads of its own.)
    """

    def __init__(self, fallback: futures.ThreadPoolExecutor, state: ServerState) -> None:
        super().__init__(max_workers=1)
        self._fallback = fallback
        self._state = state

    def submit(self, fn, /, *args, **kwargs):
        batcher = self._state.batcher
        if batcher is not None and not kwargs:  # (draining: the handler refuses wherever it runs)
            future = batcher.try_lead(fn, *args)
            if future is not None:
                return future
        return self._fallback.submit(fn, *args, **kwargs)


def _grpc_server(cfg: ServerConfig, pool: futures.ThreadPoolExecutor, max_message_bytes: int,
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


def _listen(server: grpc.Server, cfg: ServerConfig, port: int) -> int:
    address = join_host_port(cfg.host, port)
    try:
        if cfg.tls:
            bound = server.add_secure_port(address, _server_credentials(cfg))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {address} (port in use?)")
    return bound


def _add_health_and_reflection(server: grpc.Server, health_servicer, services: list[str]) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(services + [health.SERVICE_NAME, reflection.SERVICE_NAME], server)


def build_server(cfg: ServerConfig) -> ServerHandle:
    """Bind (not start) a server for `cfg`; see the module docstring for loading."""
    handlers = futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="landmarks",
                                          initializer=handler_thread, initargs=(cfg.handler_nice,))
    # beyond handler threads + the batching queue, gRPC itself answers RESOURCE_EXHAUSTED
    server = _grpc_server(cfg, handlers, cfg.max_message_bytes, cfg.max_workers + cfg.max_queue)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    state = ServerState(cfg, health_servicer)
    state.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    detect_pool = LeadFirstExecutor(handlers, state) if cfg.lone_on_lead else None
    pb_grpc.add_LandmarkServiceServicer_to_server(LandmarkServicer(state, detect_pool), server)
    admin_server = None
    if cfg.enable_admin and cfg.admin_port is None:
        pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(state), server)
        _add_health_and_reflection(server, health_servicer, list(SERVICE_NAMES))
    else:
        _add_health_and_reflection(server, health_servicer, [SERVICE_NAMES[0]])
        if cfg.enable_admin:
            admin_pool = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="landmarks-admin",
                                                    initializer=handler_thread)
            admin_server = _grpc_server(cfg, admin_pool, cfg.admin_message_bytes, 16)
            pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(state), admin_server)
            _add_health_and_reflection(admin_server, health_servicer, [SERVICE_NAMES[1]])
    if cfg.load_in_background:
        threading.Thread(target=_load_quietly, args=(state,), name="landmarks-load", daemon=True).start()
    else:
        state.load()
    port = _listen(server, cfg, cfg.port)
    handle = ServerHandle(server, port, state, admin_server=admin_server)
    if admin_server is not None:
        try:
            handle.admin_port = _listen(admin_server, cfg, cfg.admin_port)  # type: ignore[arg-type]
        except OSError:
            server.stop(None)
            raise
    if cfg.metrics_port is not None:
        try:
            handle.metrics_server, handle.metrics_port = start_metrics_server(state.metrics, cfg.host,
                                                                              cfg.metrics_port)
        except OSError as exc:
            server.stop(None)
            raise OSError(f"cannot serve metrics on {cfg.host}:{cfg.metrics_port}: {exc}") from None
    return handle


def _server_credentials(cfg: ServerConfig) -> grpc.ServerCredentials:
    try:
        key, cert = cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes()  # type: ignore[union-attr]
        ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
    except OSError as exc:
        raise OSError(f"cannot read TLS files: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _load_quietly(state: ServerState) -> None:
    # a failure is recorded in state.load_error (and logged by load()); requests answer UNAVAILABLE with it
    with contextlib.suppress(Exception):
        state.load()


def create_server(cfg: ServerConfig) -> tuple[grpc.Server, int]:
    """(server, bound port); call `server.start()`."""
    handle = build_server(cfg)
    return handle.server, handle.port


def serve(cfg: ServerConfig) -> int:
    """Run until interrupted; SIGTERM / Ctrl-C shut down gracefully within `cfg.grace_s`."""
    import signal

    handle = build_server(cfg)
    handle.start()
    log.info("listening on %s", handle.address)
    if cfg.admin_token is None and cfg.enable_admin and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the admin service is open to the network (no --admin-token-file, not --no-admin)")
    core = handle.state.core.sha256[:12] if handle.state.core else "?"
    extra = f", admin on {join_host_port(cfg.host, handle.admin_port)}" if handle.admin_port is not None else ""
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
