"""ServerConfig: everything `landmarks serve` can set, written once.

Each field carries its flag (name, help, unit, group) in its metadata; `add_arguments` generates
the command line from the fields and `from_args` builds the config back, so a default, a unit or
a check lives in one place. `__post_init__` validates every value before anything loads.
Defaults are safe: localhost only, admin on the same port, no registration from server paths.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from serving.backends import (  # names only: no backend module is imported
    BACKEND_NAMES,
    DEFAULT_BACKEND,
    PRECISIONS,
    require_backend,
)

__all__ = ["DEFAULT_PORT", "REPO_ADAPTERS", "BatchConfig", "ServerConfig", "add_arguments", "from_args",
           "join_host_port"]

REPO_ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"
DEFAULT_PORT = 50051
MIB = 1 << 20


def _flag(help: str, group: str = "server", flag: str | None = None, unit: int = 1, **argparse_kwargs) -> dict:
    """Field metadata: the flag (default --FIELD-NAME), its help, and the unit the flag counts in."""
    return {"help": help, "group": group, "flag": flag, "unit": unit, "argparse": argparse_kwargs}


@dataclass(frozen=True)
class BatchConfig:
    """The batcher's settings (serving.batching); taken from ServerConfig, which holds the defaults."""

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue: int
    workers: int
    max_admission_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if (self.max_batch_size < 1 or self.max_queue < 1 or self.workers < 1 or self.max_queue_delay_ms < 0
                or self.max_admission_wait_s < 0):
            raise ValueError("batching: --max-batch, --max-queue and --batch-workers must be >= 1 and "
                             f"--max-queue-delay-ms >= 0, got {self}")


@dataclass
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata=_flag(
        "interface to listen on (0.0.0.0 for all, e.g. in a container)"))
    port: int = field(default=DEFAULT_PORT, metadata=_flag("inference port (0 = any free; tests)"))
    admin_port: int | None = field(default=None, metadata=_flag(
        "serve the admin service (register, activate, unregister, list) on this port only, with a receive "
        "limit of --max-adapter-mb + 1, instead of on --port (default: on --port, where --max-message-mb "
        "limits registration by bytes too)"))
    adapters_dir: Path = field(default=REPO_ADAPTERS, metadata=_flag(
        "adapter store directory: <category>.safetensors files are served as version 'shipped', "
        "registrations live in <category>/<version>.safetensors (default: the repository's adapters/)",
        flag="--adapters"))
    core_path: Path | None = field(default=None, metadata=_flag(
        "core file (default: ADAPTERS/core.safetensors)", flag="--core"))
    device: str = field(default="cpu", metadata=_flag("cpu, cuda, cuda:1 ...", group="model"))
    backend: str = field(default=DEFAULT_BACKEND, metadata=_flag(
        "how folded networks run: onnxruntime = one ONNX Runtime session per adapter version, its folded "
        "weights constants of the graph, --session-threads intra-op threads each, no spinning (the fastest measured, "
        "docs/benchmark.md; needs the onnxruntime package); torchscript = one traced graph that takes each adapter's folded weights as inputs; "
        "eager = plain PyTorch modules (the reference)", group="model", choices=BACKEND_NAMES))
    precision: str = field(default="auto", metadata=_flag(
        "number format of the forward pass. auto (default): with --backend onnxruntime on a CPU with 8-bit "
        "dot products (VNNI, AMX), int8 for each adapter that carries an int8 calibration (`landmarks "
        "calibrate`; the shipped ones do) and fp32 for the rest; fp32 everywhere else. int8: every adapter in "
        "int8 (onnxruntime, CPU; registering one without a calibration fails): convolutions in int8 but the "
        "first and last two, points within 0.5 px (at 128) of fp32's on held-out images, ~1.3x the crops/s "
        "under load. fp32: always. bf16: --backend torchscript or eager on a CPU with native BF16 "
        "(AVX-512 BF16 or AMX) or a GPU (docs/benchmark.md)", group="model", choices=PRECISIONS))
    torch_threads: int | None = field(default=None, metadata=_flag(
        "torch CPU threads of a forward pass that runs alone (default: torch's choice); under load each "
        "batch worker uses its share; other threads use one", group="model", flag="--threads"))
    session_threads: int | None = field(default=None, metadata=_flag(
        "onnxruntime: intra-op threads of each session, fixed when it is made (default: --threads / "
        "--batch-workers, the most crops/s under load). All the cores lower a lone fp32 request's latency "
        "at a small cost in crops/s at high concurrency, when the workers' sessions then share the cores; "
        "in int8 it did not pay (measurements: docs/benchmark.md)", group="model"))
    cache_bytes: int = field(default=1024 * MIB, metadata=_flag(
        "folded-model cache budget in MiB (LRU; models in use are never evicted)", group="model",
        flag="--cache-mb", unit=MIB))
    max_adapter_bytes: int = field(default=64 * MIB, metadata=_flag(
        "adapter file size cap in MiB", group="model", flag="--max-adapter-mb", unit=MIB))
    max_workers: int = field(default=32, metadata=_flag("gRPC handler threads", flag="--workers"))
    handler_nice: int = field(default=0, metadata=_flag(
        "lower the CPU priority of gRPC handler threads by this nice value, so decoding yields to forward "
        "passes (0: off)"))
    max_message_bytes: int = field(default=64 * MIB, metadata=_flag(
        "largest request on --port in MiB, e.g. an image; gRPC refuses larger ones with RESOURCE_EXHAUSTED "
        "before reading them", flag="--max-message-mb", unit=MIB))
    max_image_pixels: int = field(default=50_000_000, metadata=_flag(
        "refuse images with more pixels (read from the header, before decoding)", group="requests"))
    min_image_side: int = field(default=4, metadata=_flag("refuse images with a side below this", group="requests"))
    max_batch_items: int = field(default=256, metadata=_flag("most images in one DetectBatch", group="requests"))
    max_batch_size: int = field(default=16, metadata=_flag(
        "most requests per forward pass", group="batching", flag="--max-batch"))
    max_queue_delay_ms: float = field(default=2.0, metadata=_flag(
        "longest wait for requests still being decoded to join a batch", group="batching"))
    max_queue: int = field(default=256, metadata=_flag(
        "waiting requests before RESOURCE_EXHAUSTED (a DetectBatch that does not fit waits for room)",
        group="batching"))
    batch_workers: int = field(default=2, metadata=_flag(
        "forward passes that may run at once; under load each gets --threads / N threads (onnxruntime: "
        "every session has --threads / N threads)", group="batching"))
    lone_on_lead: bool = field(default=True, metadata=_flag(
        "send every Detect through the batching queue; by default a call that would be the only one "
        "computing runs whole on the lead batch worker, saving two thread hand-offs", group="batching",
        flag="--no-lone-on-lead"))
    grace_s: float = field(default=10.0, metadata=_flag(
        "seconds in-flight requests get on SIGTERM before they are cancelled", flag="--grace"))
    metrics_port: int | None = field(default=None, metadata=_flag(
        "serve Prometheus /metrics on this port of --host (default: off; 0 = any free port)"))
    http_port: int | None = field(default=None, metadata=_flag(
        "also serve HTTP/JSON on this port of --host: POST /v1/detect, GET /v1/categories, /v1/health, "
        "/openapi.json, and a demo page at / (same checks, tokens and TLS as gRPC; default: off; "
        "0 = any free port)"))
    enable_admin: bool = field(default=True, metadata=_flag(
        "do not serve the admin service", group="security", flag="--no-admin"))
    allowed_register_dirs: tuple[Path, ...] = field(default=(), metadata=_flag(
        "directory RegisterAdapter(path=...) may read from (repeatable; default: none)", group="security",
        flag="--allow-path"))
    tls_cert: Path | None = field(default=None, metadata=_flag(
        "PEM certificate chain: serve TLS (with --tls-key)", group="security"))
    tls_key: Path | None = field(default=None, metadata=_flag("PEM private key", group="security"))
    tls_client_ca: Path | None = field(default=None, metadata=_flag(
        "require client certificates signed by this CA (mutual TLS)", group="security"))
    admin_token: str | None = field(default=None, repr=False, metadata=_flag(
        "file with the bearer token admin calls need (default: $LANDMARKS_ADMIN_TOKEN, else open)",
        group="security", flag="--admin-token-file"))
    inference_token: str | None = field(default=None, repr=False, metadata=_flag(
        "file with the bearer token Detect calls need, or the admin one (default: $LANDMARKS_TOKEN, else open)",
        group="security", flag="--inference-token-file"))
    load_in_background: bool = False  # return from build_server at once, load the core in a thread (tests)

    def __post_init__(self) -> None:
        self.adapters_dir = Path(self.adapters_dir)
        if self.core_path is not None:
            self.core_path = Path(self.core_path)
        self.allowed_register_dirs = tuple(Path(p) for p in self.allowed_register_dirs)
        for name in ("port", "admin_port", "metrics_port", "http_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {value}")
        if self.admin_port is not None and not self.enable_admin:
            raise ValueError("--admin-port and --no-admin contradict each other")
        if self.admin_port is not None and self.admin_port == self.port != 0:
            raise ValueError(f"the admin port must differ from the inference port ({self.port})")
        if self.http_port is not None and self.http_port != 0 and self.http_port in (self.port, self.admin_port):
            raise ValueError(f"--http-port {self.http_port} is already the gRPC (or admin) port; choose another")
        if self.max_message_bytes < 1 << 10 or self.max_adapter_bytes < 1 << 10:
            raise ValueError("message and adapter limits must be at least 1 KiB")
        if self.cache_bytes <= 0:
            raise ValueError(f"--cache-mb must be positive, got {self.cache_bytes / MIB:g}")
        for name in ("max_workers", "max_image_pixels", "min_image_side", "max_batch_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.torch_threads}")
        if self.session_threads is not None and self.session_threads < 1:
            raise ValueError(f"--session-threads must be >= 1, got {self.session_threads}")
        if self.session_threads is not None and self.backend != "onnxruntime":
            raise ValueError(f"--session-threads sets ONNX Runtime sessions' threads; --backend {self.backend} "
                             "takes its threads from --threads")
        if self.grace_s < 0:
            raise ValueError(f"--grace must be >= 0, got {self.grace_s}")
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
        require_backend(self.backend)  # the torch backends need the train extra: say so before anything loads
        self._check_precision()
        self.batching  # noqa: B018  validates the batching values now, before anything loads
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert/--tls-key")
        if self.admin_token is not None and self.admin_token == self.inference_token:
            raise ValueError("the admin token must differ from the inference token")

    def _check_precision(self) -> None:
        if self.precision in ("fp32", "auto"):
            return
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "int8":
            if self.backend != "onnxruntime" or self.device != "cpu":
                raise ValueError("--precision int8 runs on --backend onnxruntime on the CPU (ONNX Runtime's int8 "
                                 "convolutions); serve fp32 or bf16 otherwise")
            return
        if self.backend == "onnxruntime":
            raise ValueError("--precision bf16 runs on --backend torchscript or eager; the onnxruntime backend "
                             "runs fp32")
        if not self.device.startswith("cuda"):
            from landmarks.hardware import cpu_bf16_flags

            if not cpu_bf16_flags():
                raise ValueError("--precision bf16: this CPU has neither AVX-512 BF16 nor AMX, so bf16 would be "
                                 "emulated and many times slower than fp32; serve fp32 (the default)")

    @property
    def batching(self) -> BatchConfig:
        return BatchConfig(self.max_batch_size, self.max_queue_delay_ms, self.max_queue, self.batch_workers)

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
        return self.max_adapter_bytes + MIB


def join_host_port(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{host}:{port}"


_FLAGGED = [f for f in dataclasses.fields(ServerConfig) if f.metadata]
_TOKEN_ENV = {"admin_token": "LANDMARKS_ADMIN_TOKEN", "inference_token": "LANDMARKS_TOKEN"}


def _option(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _chosen(fields: Collection[str] | None) -> list[dataclasses.Field]:
    if fields is not None and (unknown := set(fields) - {f.name for f in _FLAGGED}):
        raise ValueError(f"not ServerConfig flags: {sorted(unknown)}")
    return [f for f in _FLAGGED if fields is None or f.name in fields]


def add_arguments(parser: argparse.ArgumentParser, fields: Collection[str] | None = None) -> None:
    """One flag per ServerConfig field (or per field named in `fields`: another command that shares
    some, e.g. `serve-ray`), in groups, with the field's default in its help."""
    groups = {"server": parser}
    for f in _chosen(fields):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        option, unit = _option(f), meta["unit"]
        kind, metavar = str(f.type), option[2:].upper().replace("-", "_")
        if kind == "bool":  # every boolean flag turns a default-on behaviour off
            group.add_argument(option, dest=f.name, action="store_false", help=meta["help"])
            continue
        if f.name in _TOKEN_ENV:
            group.add_argument(option, dest=f.name, type=Path, default=None, metavar=metavar, help=meta["help"])
            continue
        if kind.startswith("tuple"):
            group.add_argument(option, dest=f.name, type=Path, action="append", default=[], metavar=metavar,
                               help=meta["help"])
            continue
        convert = Path if "Path" in kind else float if "float" in kind else int if "int" in kind else str
        default = f.default if f.default is None or unit == 1 else f.default // unit
        shown = "off" if default is None and f.name == "metrics_port" else default
        help_text = meta["help"] + ("" if "(default" in meta["help"] or default is None else f" (default {shown})")
        group.add_argument(option, dest=f.name, type=convert, default=default, metavar=metavar, help=help_text,
                           **meta["argparse"])


def from_args(args: argparse.Namespace, fields: Collection[str] | None = None) -> ServerConfig:
    """The config the parsed flags describe (only `fields`' flags, as `add_arguments` made them; the rest
    keep their defaults). Raises ValueError / OSError with what is wrong."""
    from landmarks.tokens import read_token

    values = {}
    for f in _chosen(fields):
        value = getattr(args, f.name)
        if f.name in _TOKEN_ENV:
            value = read_token(value, _TOKEN_ENV[f.name])
        elif value is not None and f.metadata["unit"] != 1:
            value = int(value * f.metadata["unit"])
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    if not values.get("enable_admin", True):
        values["admin_token"] = None
    return ServerConfig(**values)
