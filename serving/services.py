"""The server's parts, built once when the core loads, and the one reference that publishes them.

    Services: core -> backend -> models (folded-model cache) -> registry -> engine -> batcher
    Lifecycle: loading -> serving -> draining; health, and `require()` for the servicers

Nothing is half-built: `load_services` returns every part or raises, and `Lifecycle.publish`
makes them visible at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2

from landmarks.adapter_io import ArtifactError, Core, load_core
from serving.backends import Backend, make_backend
from serving.batching import DynamicBatcher
from serving.config import ServerConfig
from serving.engine import InferenceEngine
from serving.errors import Reason, ServingError
from serving.metrics import Metrics
from serving.model_cache import CacheStats, ModelCache
from serving.models import FoldedModels
from serving.registry import AdapterRegistry
from serving.store import AdapterStore
from serving.threads import DEFAULT_COMPUTE_THREADS, ComputeThreads, compute_thread, single_threaded

__all__ = ["CoreLoadError", "Lifecycle", "Services", "load_services"]

log = logging.getLogger(__name__)


class CoreLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Services:
    core: Core
    backend: Backend
    models: FoldedModels
    registry: AdapterRegistry
    engine: InferenceEngine
    batcher: DynamicBatcher

    # what serving.metrics reads (its `Measured`)
    def known(self, category: str) -> bool:
        return self.registry.known(category)

    def cache_stats(self) -> CacheStats:
        return self.models.stats()

    def category_count(self) -> int:
        return len(self.registry.list())


def load_services(cfg: ServerConfig, metrics: Metrics) -> Services:
    """Load the core and every stored adapter, and start the batch workers."""
    single_threaded()  # loading runs here; forward passes run in the batch workers (serving.threads)
    path = cfg.resolved_core_path
    if not path.is_file():
        raise CoreLoadError(f"no core file at {path}. Train one (landmarks train-core ...) and copy its "
                            "core.safetensors there, or point the server at one with --core FILE")
    try:
        core = load_core(path)
    except ArtifactError as exc:
        raise CoreLoadError(f"cannot load the core {path}: {exc}") from None
    threads = ComputeThreads.split(cfg.torch_threads or DEFAULT_COMPUTE_THREADS, cfg.batch_workers, compute_thread)
    # ORT has its own thread pools (serving.threads governs torch's; torch backends take their threads per
    # call), fixed when a session is made: by default each gets a batch worker's share, since two workers'
    # one-thread forwards side by side give the most crops/s on 2 cores; --session-threads trades some of
    # that for a lone request's latency (at 128 px two threads cut it ~40%, docs/benchmark.md)
    options = {"precision": cfg.precision}
    if cfg.backend == "onnxruntime":
        options["threads"] = cfg.session_threads or threads.shared
    try:
        backend = make_backend(cfg.backend, core, cfg.device, **options)
    except ValueError as exc:  # e.g. --device cuda without onnxruntime-gpu
        raise CoreLoadError(f"backend {cfg.backend}: {exc}") from None
    models = FoldedModels(backend, ModelCache(cfg.cache_bytes))
    registry = AdapterRegistry(core, models, AdapterStore(cfg.adapters_dir), cfg.max_adapter_bytes,
                               cfg.allowed_register_dirs)
    registry.load_store()
    engine = InferenceEngine(models, backend)
    batcher = DynamicBatcher(engine, cfg.batching, metrics, threads)
    log.info("core %s loaded on %s; %d categories", core.sha256[:12], backend.device, len(registry.list()))
    return Services(core, backend, models, registry, engine, batcher)


class Lifecycle:
    """Whether the server takes requests, and the services once they are loaded."""

    def __init__(self, health_servicer: health.HealthServicer, service_names: tuple[str, ...]) -> None:
        self.health = health_servicer
        self._names = ("",) + service_names
        self._services: Services | None = None
        self.load_error = ""
        self.draining = False
        self.loaded = threading.Event()  # set when loading ended, either way
        self.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    @property
    def services(self) -> Services | None:
        return self._services

    def publish(self, services: Services) -> None:
        self._services = services
        self.set_health(health_pb2.HealthCheckResponse.SERVING)
        self.loaded.set()

    def fail(self, message: str) -> None:
        self.load_error = message
        log.error("server failed to load: %s", message)
        self.loaded.set()

    def drain(self) -> None:
        self.draining = True
        self.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._services is not None:
            self._services.batcher.drain()

    def require(self) -> Services:
        """The services, or UNAVAILABLE saying why there are none (yet)."""
        if self._services is None:
            why = f"failed to load: {self.load_error}" if self.load_error else "is starting (loading the core)"
            raise ServingError(grpc.StatusCode.UNAVAILABLE, Reason.SERVER_UNAVAILABLE, f"server {why}")
        return self._services

    def require_serving(self) -> Services:
        """As `require`, and UNAVAILABLE once shutting down (for new inference work)."""
        if self.draining:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, Reason.SERVER_UNAVAILABLE,
                               "server is shutting down; retry on another replica")
        return self.require()

    def set_health(self, status: int) -> None:
        for name in self._names:
            self.health.set(name, status)
