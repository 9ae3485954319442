"""ServerConfig: everything `landmarks serve` can set, with safe defaults (localhost only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_PORT", "REPO_ADAPTERS", "ServerConfig", "join_host_port"]

REPO_ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"
DEFAULT_PORT = 50051


@dataclass
class ServerConfig:
    """How to run the server.

    Attributes:
        host, port: where to listen; port 0 picks a free port (tests). Localhost by default.
        adapters_dir: the adapter store. Shipped flat files `<dir>/<category>.safetensors` are
            served as version "shipped"; registrations live in `<dir>/<category>/<version>.safetensors`
            with `<dir>/<category>/_state.json` naming the active version.
        core_path: the frozen core; default `<adapters_dir>/core.safetensors`.
        device: "cpu", "cuda", "cuda:1", ...
        backend: how folded networks run (serving.backend): "torchscript" (one traced graph with each
            adapter's folded weights as inputs, runs without the GIL) or "eager" (plain PyTorch modules).
        max_workers: gRPC handler threads (RPCs beyond max_workers + max_queue are refused by gRPC).
        torch_threads: torch threads of a forward pass that runs alone (None: torch's default);
            under load each of the batch_workers uses its share (serving.batching.ComputeThreads);
            every other thread runs torch single-threaded (serving.threads).
        handler_nice: nice value added to gRPC handler threads (0: none), so that decoding
            and replying yield the CPU to the forward pass (serving.threads.handler_thread).
        cache_bytes: budget of the folded-weights cache (LRU; in-use entries are never evicted).
        max_adapter_bytes: size cap for an adapter file.
        max_message_bytes: gRPC receive/send limit of the inference port (and of the admin plane when it
            shares that port). gRPC's limit is per server, so adapters larger than this are registered by
            `path` or through an admin port of their own.
        admin_port: serve AdminService on this port only (its own receive limit, max_adapter_bytes + 1 MiB;
            same host, TLS and tokens), not on `port` (None: on `port`; 0: any free port).
        max_image_pixels: reject images with more pixels (checked from the header, before decoding).
        min_image_side: reject images with a side below this.
        max_batch_items: most images in one DetectBatch.
        allowed_register_dirs: directories RegisterAdapter(path=...) may read from (after resolving
            symlinks); empty: registration by path is refused.
        enable_admin: serve AdminService.
        load_in_background: return from create_server at once and load the core in a thread
            (health says NOT_SERVING until it is loaded); default: load before returning.
        max_batch_size, max_queue_delay_ms, max_queue, batch_workers: dynamic batching
            (serving.batching): requests of one category/version are run together, up to
            max_batch_size; a worker waits at most max_queue_delay_ms for requests still being
            decoded; more than max_queue waiting requests -> RESOURCE_EXHAUSTED; batch_workers
            forward passes may run at once (under load, each on its share of the threads).
        lone_on_lead: a Detect call that would be the only one computing runs whole on the lead
            batch worker, not through the queue (serving.server.LeadFirstExecutor).
        metrics_port: Prometheus /metrics on this port of `host` (None: off; 0: any free port).
        grace_s: on SIGTERM, how long in-flight requests may take before they are cancelled.
        tls_cert, tls_key: PEM files; serve TLS instead of plaintext. tls_client_ca: also require
            client certificates signed by this CA (mutual TLS).
        admin_token, inference_token: bearer tokens for AdminService / LandmarkService (None:
            that plane is open); see serving.auth.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    adapters_dir: Path = REPO_ADAPTERS
    core_path: Path | None = None
    device: str = "cpu"
    backend: str = "torchscript"
    max_workers: int = 32
    torch_threads: int | None = None
    handler_nice: int = 0
    cache_bytes: int = 1 << 30
    max_adapter_bytes: int = 64 << 20
    max_message_bytes: int = 64 << 20
    admin_port: int | None = None
    max_image_pixels: int = 50_000_000
    min_image_side: int = 4
    max_batch_items: int = 256
    allowed_register_dirs: tuple[Path, ...] = field(default_factory=tuple)
    enable_admin: bool = True
    load_in_background: bool = False
    max_batch_size: int = 16
    max_queue_delay_ms: float = 2.0
    max_queue: int = 256
    batch_workers: int = 2
    lone_on_lead: bool = True
    metrics_port: int | None = None
    grace_s: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    admin_token: str | None = field(default=None, repr=False)
    inference_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.adapters_dir = Path(self.adapters_dir)
        if self.core_path is not None:
            self.core_path = Path(self.core_path)
        self.allowed_register_dirs = tuple(Path(p) for p in self.allowed_register_dirs)
        for name in ("port", "admin_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {value}")
        if self.admin_port is not None and not self.enable_admin:
            raise ValueError("--admin-port and --no-admin contradict each other")
        if self.admin_port is not None and self.admin_port == self.port != 0:
            raise ValueError(f"the admin port must differ from the inference port ({self.port})")
        if self.max_message_bytes < 1 << 10 or self.max_adapter_bytes < 1 << 10:
            raise ValueError("message and adapter limits must be at least 1 KiB")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert/--tls-key")
        if self.admin_token is not None and self.admin_token == self.inference_token:
            raise ValueError("the admin token must differ from the inference token")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def resolved_core_path(self) -> Path:
        return self.core_path if self.core_path is not None else self.adapters_dir / "core.safetensors"

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def admin_message_bytes(self) -> int:
        """The admin plane's receive limit on a port of its own: the largest adapter, plus the message."""
        return self.max_adapter_bytes + (1 << 20)


def join_host_port(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{host}:{port}"
