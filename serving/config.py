"""ServerConfig: everything `landmarks serve` can set, with safe defaults (localhost only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_PORT", "REPO_ADAPTERS", "ServerConfig"]

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
        max_workers: gRPC handler threads.
        torch_threads: torch.set_num_threads at start-up (None: leave torch's default).
        cache_bytes: budget of the folded-weights cache (LRU; in-use entries are never evicted).
        max_adapter_bytes: size cap for an adapter file.
        max_message_bytes: gRPC receive/send limit.
        max_image_pixels: reject images with more pixels (checked from the header, before decoding).
        min_image_side: reject images with a side below this.
        max_batch_items: most images in one DetectBatch.
        allowed_register_dirs: directories RegisterAdapter(path=...) may read from (after resolving
            symlinks); empty: registration by path is refused.
        enable_admin: serve AdminService.
        load_in_background: return from create_server at once and load the core in a thread
            (health says NOT_SERVING until it is loaded); default: load before returning.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    adapters_dir: Path = REPO_ADAPTERS
    core_path: Path | None = None
    device: str = "cpu"
    max_workers: int = 16
    torch_threads: int | None = None
    cache_bytes: int = 1 << 30
    max_adapter_bytes: int = 256 << 20
    max_message_bytes: int = 64 << 20
    max_image_pixels: int = 50_000_000
    min_image_side: int = 4
    max_batch_items: int = 256
    allowed_register_dirs: tuple[Path, ...] = field(default_factory=tuple)
    enable_admin: bool = True
    load_in_background: bool = False

    def __post_init__(self) -> None:
        self.adapters_dir = Path(self.adapters_dir)
        if self.core_path is not None:
            self.core_path = Path(self.core_path)
        self.allowed_register_dirs = tuple(Path(p) for p in self.allowed_register_dirs)
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_adapter_bytes > self.max_message_bytes:
            self.max_message_bytes = self.max_adapter_bytes + (1 << 20)

    @property
    def resolved_core_path(self) -> Path:
        return self.core_path if self.core_path is not None else self.adapters_dir / "core.safetensors"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"
