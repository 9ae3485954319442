"""The registry's records: a version of a category's adapter, a category, what clients see of it,
and the lease a request holds on the version it started with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from landmarks.adapter_io import Adapter

__all__ = ["FAILED", "LOADING", "READY", "UNLOADING", "CategoryRecord", "CategoryStatus", "VersionEntry",
           "VersionLease"]

LOADING, READY, UNLOADING, FAILED = "LOADING", "READY", "UNLOADING", "FAILED"


@dataclass(eq=False)
class VersionEntry:
    category: str
    version: str
    adapter: Adapter | None  # None when it failed to load at start-up
    sha256: str
    size_bytes: int
    created: str
    path: Path | None
    error: str = ""
    leases: int = 0
    retired: bool = False

    @property
    def cache_key(self) -> tuple[str, str, str]:
        return (self.category, self.version, self.sha256)

    @property
    def state(self) -> str:
        if self.adapter is None:
            return FAILED
        return UNLOADING if self.retired else READY


@dataclass
class CategoryRecord:
    name: str
    versions: dict[str, VersionEntry] = field(default_factory=dict)
    active: str | None = None
    loading: bool = False
    error: str = ""


@dataclass(frozen=True)
class CategoryStatus:
    name: str
    state: str
    num_landmarks: int
    input_size: int
    active_version: str
    active_sha256: str
    core_sha256: str
    versions: tuple[VersionEntry, ...]
    error: str = ""


class VersionLease:
    """A request's hold on the version it started with; `release()` (or the `with` block's end) once."""

    __slots__ = ("_release", "entry")

    def __init__(self, release: Callable[[VersionEntry], None], entry: VersionEntry) -> None:
        self._release = release  # AdapterRegistry._release: once, then the lease is spent
        self.entry = entry

    @property
    def adapter(self) -> Adapter:
        assert self.entry.adapter is not None
        return self.entry.adapter

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(self.entry)

    def __enter__(self) -> VersionLease:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.release()
