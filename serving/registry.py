"""AdapterRegistry: which adapter versions exist, which one is active, and the store on disk.

Store layout (the adapters directory is the source of truth; restart serves it again):

    <dir>/core.safetensors                     the frozen core (not an adapter)
    <dir>/<category>.safetensors               a shipped adapter, served as version "shipped"
    <dir>/<category>/<version>.safetensors     registered versions (written atomically)
    <dir>/<category>/_state.json               {"active": version, "shipped_removed": sha256|null}

Registration validates everything before anything becomes visible: safetensors format (no
pickle), tensor names/shapes/dtypes, finite values, format version and core fingerprint
(`landmarks.adapter_io.load_adapter`), the size cap, K against the category's other versions,
and a trial forward pass on a dummy image with finite output. Versions are immutable: the same
version with the same content is an idempotent OK, with other content ALREADY_EXISTS.

Requests `acquire()` a lease on the version they start with; unregistering removes a version
from view at once (its category shows UNLOADING while leases remain) and its folded weights
leave the cache when the last lease ends. Admin operations are serialised by one lock; the
request path only takes a short state lock.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from landmarks.adapter_io import Adapter, ArtifactError, Core, load_adapter
from serving.backend import Backend
from serving.errors import ServingError, clip, from_artifact_error, from_os_error
from serving.folding import FoldedCache

__all__ = [
    "CATEGORY_RE",
    "SHIPPED",
    "VERSION_RE",
    "AdapterRegistry",
    "CategoryStatus",
    "VersionEntry",
    "VersionLease",
    "parse_state",
    "validate_category",
    "validate_version",
]

log = logging.getLogger(__name__)
Code = grpc.StatusCode

CATEGORY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHIPPED = "shipped"
STATE_FILE = "_state.json"
SUFFIX = ".safetensors"

LOADING, READY, UNLOADING, FAILED = "LOADING", "READY", "UNLOADING", "FAILED"


def validate_category(name: str, field_name: str = "category") -> str:
    if not isinstance(name, str) or not CATEGORY_RE.fullmatch(name) or name == "core":
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"{field_name}: {clip(name)} is not a valid category name "
                           f"(lower-case letters, digits, '_' and '-', 1-64 characters, not 'core')")
    return name


def validate_version(version: str, field_name: str = "version", allow_shipped: bool = True) -> str:
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version) or version.endswith(SUFFIX):
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"{field_name}: {clip(version)} is not a valid version "
                           f"(letters, digits, '.', '_' and '-', 1-64 characters, starting with a letter or digit)")
    if version == SHIPPED and not allow_shipped:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"{field_name}: {SHIPPED!r} is reserved for the adapter file shipped with the server")
    return version


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def parse_state(data: bytes) -> dict:
    """A category's `_state.json` -> {"active": version | None, "shipped_removed": sha256 | None}.

    Raises ValueError for anything else (not UTF-8 JSON, not an object, wrong types, names that
    are not versions): the store's files are hand-editable, and a bad one must cost its category
    the choice of active version, never the server's start."""
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(state, dict):
        raise ValueError(f"must be a JSON object, got {type(state).__name__}")
    out: dict = {}
    active = state.get("active")
    if active is not None and (not isinstance(active, str) or not VERSION_RE.fullmatch(active)):
        raise ValueError(f"'active' must be a version name or null, got {str(active)[:80]!r}")
    out["active"] = active
    removed = state.get("shipped_removed")
    if removed is not None and (not isinstance(removed, str) or not _SHA256_RE.fullmatch(removed)):
        raise ValueError(f"'shipped_removed' must be a sha256 hex digest or null, got {str(removed)[:80]!r}")
    out["shipped_removed"] = removed
    return out


TEMP_RE = re.compile(r"^\..+\.\d+\.\d+\.tmp$")  # what _atomic_write leaves if the process dies mid-write


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never part of one; on failure no temp file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


def _sweep_temp_files(root: Path) -> None:
    """Remove temp files of writes a killed server never finished (start-up, before anything is written)."""
    for folder in [root, *(p for p in root.iterdir() if p.is_dir())]:
        for tmp in folder.iterdir():
            if TEMP_RE.fullmatch(tmp.name) and tmp.is_file():
                with suppress(OSError):
                    tmp.unlink()
                    log.warning("removed %s, left by an interrupted write", tmp)


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
class _Category:
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


@dataclass(frozen=True)
class VersionLease:
    entry: VersionEntry

    @property
    def adapter(self) -> Adapter:
        assert self.entry.adapter is not None
        return self.entry.adapter


class AdapterRegistry:
    def __init__(self, core: Core, backend: Backend, cache: FoldedCache, adapters_dir: Path | str,
                 max_adapter_bytes: int = 256 << 20, allowed_register_dirs: tuple[Path, ...] = ()) -> None:
        self.core = core
        self.backend = backend
        self.cache = cache
        self.dir = Path(adapters_dir)
        self.max_adapter_bytes = max_adapter_bytes
        self.allowed_register_dirs = tuple(Path(os.path.realpath(p)) for p in allowed_register_dirs)
        self._categories: dict[str, _Category] = {}
        self._retired: list[VersionEntry] = []
        self._state_lock = threading.Lock()
        self._admin_lock = threading.RLock()

    # ------------------------------------------------------------------------- validation
    def _validate_bytes(self, data: bytes, label: str) -> tuple[Adapter, object]:
        """Full validation; returns the adapter and its prepared (folded, warmed-up) model."""
        try:
            adapter = load_adapter(data, self.core, max_bytes=self.max_adapter_bytes, name=label)
        except ArtifactError as exc:
            raise from_artifact_error(exc, "adapter") from None
        prepared = self._trial(adapter, label)
        return adapter, prepared

    def _trial(self, adapter: Adapter, label: str) -> object:
        try:
            prepared = self.backend.prepare(adapter)
        except ValueError as exc:  # folding produced non-finite weights
            raise ServingError(Code.INVALID_ARGUMENT, f"adapter: {label}: {exc}") from None
        size = adapter.config.input_size
        ramp = torch.linspace(0, 1, size)
        dummy = torch.stack((ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size),
                             torch.full((size, size), 0.5))).unsqueeze(0)
        out = self.backend.run(prepared, dummy)
        expected = (1, adapter.num_landmarks, size // 4, size // 4)
        if tuple(out.shape) != expected:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"adapter: {label}: trial forward gave shape {tuple(out.shape)}, expected {expected}")
        if not torch.isfinite(out).all():
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"adapter: {label}: trial forward on a dummy image produced NaN/Inf heatmaps "
                               "(batch-norm statistics or weights out of range); the file is broken")
        return prepared

    def _check_k(self, cat: _Category | None, adapter: Adapter, label: str) -> None:
        if cat is None:
            return
        for other in cat.versions.values():
            if other.adapter is not None and other.adapter.num_landmarks != adapter.num_landmarks:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"adapter: {label} has K={adapter.num_landmarks} landmarks but version {other.version!r} of "
                    f"{cat.name!r} has K={other.adapter.num_landmarks}; clients rely on K, so register it under "
                    "a new category or unregister the old versions first")

    def _read_source(self, data: bytes | None, path: str | None) -> tuple[bytes, str]:
        if path:
            if not self.allowed_register_dirs:
                raise ServingError(Code.PERMISSION_DENIED,
                                   "path: registration from server-side paths is disabled; send the file bytes "
                                   "(data) or start the server with --allow-path DIR")
            if "\x00" in path or len(path) > 4096:
                raise ServingError(Code.INVALID_ARGUMENT, f"path: {clip(path)} is not a usable file path "
                                                          "(NUL byte, or over 4096 characters)")
            try:
                real = Path(os.path.realpath(path))  # resolves symlinks and '..'
                if not any(real == root or root in real.parents for root in self.allowed_register_dirs):
                    raise ServingError(Code.PERMISSION_DENIED,
                                       f"path: {clip(path)} is outside the directories this server allows "
                                       f"({', '.join(map(str, self.allowed_register_dirs))})")
                if not real.is_file():
                    raise ServingError(Code.NOT_FOUND, f"path: {clip(path)} is not a file")
                size = real.stat().st_size
                if size > self.max_adapter_bytes:
                    raise ServingError(Code.RESOURCE_EXHAUSTED,
                                       f"path: {clip(path)} is {size} bytes, over the "
                                       f"{self.max_adapter_bytes}-byte adapter limit")
                return real.read_bytes(), clip(path)
            except (OSError, ValueError) as exc:
                raise ServingError(Code.INVALID_ARGUMENT, f"path: cannot read {clip(path)}: {exc}") from None
        if not data:
            raise ServingError(Code.INVALID_ARGUMENT, "data: empty; send the adapter's .safetensors bytes or a path")
        return data, "the adapter bytes"

    # ---------------------------------------------------------------------------- storage
    def _category_dir(self, category: str) -> Path:
        return self.dir / category

    def _read_state(self, category: str) -> dict:
        path = self._category_dir(category) / STATE_FILE
        try:
            return parse_state(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (the newest good version will be active): %s", path, exc)
            return {}

    def _write_state(self, category: str, **changes: object) -> None:
        state = self._read_state(category)
        state.update(changes)
        _atomic_write(self._category_dir(category) / STATE_FILE, json.dumps(state, indent=1).encode())

    def load_store(self) -> None:
        """Load every adapter in the store (start-up). Bad files leave their version FAILED."""
        if not self.dir.is_dir():
            log.warning("adapters directory %s does not exist; starting with no categories", self.dir)
            return
        _sweep_temp_files(self.dir)
        found: dict[str, dict[str, Path]] = {}
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            name = path.name[: -len(SUFFIX)]
            if name != "core" and CATEGORY_RE.fullmatch(name):
                found.setdefault(name, {})[SHIPPED] = path
        for sub in sorted(p for p in self.dir.iterdir() if p.is_dir() and CATEGORY_RE.fullmatch(p.name)):
            for path in sorted(sub.glob(f"*{SUFFIX}")):
                version = path.name[: -len(SUFFIX)]
                if VERSION_RE.fullmatch(version) and version != SHIPPED:
                    found.setdefault(sub.name, {})[version] = path
        for category, versions in found.items():
            state = self._read_state(category)
            cat = _Category(category)
            for version, path in versions.items():
                label = f"{category}/{version} ({path})"
                created = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).isoformat(
                    timespec="seconds")
                try:
                    data = path.read_bytes()
                    adapter, prepared = self._validate_bytes(data, label)
                except (ServingError, OSError) as exc:
                    message = getattr(exc, "message", str(exc))
                    log.error("cannot load %s: %s", label, message)
                    cat.versions[version] = VersionEntry(category, version, None, "", path.stat().st_size, created,
                                                         path, error=message)
                    continue
                if version == SHIPPED and state.get("shipped_removed") == adapter.sha256:
                    continue  # unregistered earlier; a different shipped file would come back
                entry = VersionEntry(category, version, adapter, adapter.sha256, len(data), created, path)
                cat.versions[version] = entry
                self.cache.put(entry.cache_key, prepared, self.backend.nbytes(prepared))
            if not cat.versions:
                continue
            active = state.get("active")
            if active not in cat.versions:
                good = [v for v in cat.versions.values() if v.adapter is not None]
                active = max(good, key=lambda v: (v.created, v.version)).version if good else None
            cat.active = active
            if active is None or cat.versions[active].adapter is None:
                failed = [v.error for v in cat.versions.values() if v.error]
                cat.error = cat.versions[active].error if active else "; ".join(failed)
            self._categories[category] = cat
            log.info("category %s: versions %s, active %s", category, sorted(cat.versions), cat.active)

    # ------------------------------------------------------------------------------ admin
    def register(self, category: str, version: str, data: bytes | None = None, path: str | None = None,
                 activate: bool = True) -> tuple[CategoryStatus, bool]:
        """Validate and store a new version; returns (status, created)."""
        validate_category(category)
        validate_version(version, allow_shipped=False)
        raw, source = self._read_source(data, path)
        label = f"{category}/{version} ({source})"
        with self._admin_lock:
            with self._state_lock:
                cat = self._categories.get(category)
                is_new = cat is None
                if is_new:
                    cat = self._categories[category] = _Category(category, loading=True)
            try:
                adapter, prepared = self._validate_bytes(raw, label)
                existing = cat.versions.get(version)
                if existing is not None:
                    if existing.sha256 == adapter.sha256:
                        if activate and cat.active != version:
                            self._activate(cat, version)
                        return self._status(cat), False
                    raise ServingError(Code.ALREADY_EXISTS,
                                       f"version: {category}/{version} already exists with other content "
                                       f"(sha256 {existing.sha256[:12]}, this file {adapter.sha256[:12]}); versions "
                                       "are immutable, register it under a new version")
                self._check_k(cat, adapter, label)
                target = self._category_dir(category) / f"{version}{SUFFIX}"
                make_active = activate or cat.active is None or cat.versions[cat.active].adapter is None
                try:  # the file, then the state that makes it active: both or neither
                    _atomic_write(target, raw)
                    if make_active:
                        self._write_state(category, active=version)
                except OSError as exc:
                    with suppress(OSError):
                        target.unlink()
                    raise from_os_error(exc, f"registering {category}/{version}") from None
                entry = VersionEntry(category, version, adapter, adapter.sha256, len(raw), _now(), target)
                self.cache.put(entry.cache_key, prepared, self.backend.nbytes(prepared))
                with self._state_lock:
                    cat.versions[version] = entry
                    cat.loading = False
                    if make_active:
                        cat.active, cat.error = version, ""
                log.info("registered %s (sha256 %s)%s", label, adapter.sha256[:12], " [active]" if activate else "")
                return self._status(cat), True
            finally:
                with self._state_lock:
                    cat.loading = False
                    if is_new and not cat.versions and self._categories.get(category) is cat:
                        del self._categories[category]  # a failed first registration leaves nothing behind

    def _activate(self, cat: _Category, version: str) -> None:
        """Caller holds the admin lock. The state file first: if it cannot be written nothing changes."""
        try:
            self._write_state(cat.name, active=version)
        except OSError as exc:
            raise from_os_error(exc, f"activating {cat.name}/{version}") from None
        with self._state_lock:
            cat.active = version
            cat.error = ""

    def set_active(self, category: str, version: str) -> CategoryStatus:
        validate_category(category)
        validate_version(version)
        with self._admin_lock:
            cat = self._require(category)
            entry = cat.versions.get(version)
            if entry is None:
                raise ServingError(Code.NOT_FOUND, f"version: {category!r} has no version {version!r} "
                                                   f"(it has {sorted(cat.versions)})")
            if entry.adapter is None:
                raise ServingError(Code.FAILED_PRECONDITION,
                                   f"version: {category}/{version} failed to load ({entry.error}); pick another")
            self._activate(cat, version)
            return self._status(cat)

    def unregister(self, category: str, version: str | None = None) -> list[str]:
        """Remove one version (not the active one while others remain) or the whole category."""
        validate_category(category)
        if version:
            validate_version(version)
        with self._admin_lock:
            cat = self._require(category)
            if version:
                if version not in cat.versions:
                    raise ServingError(Code.NOT_FOUND, f"version: {category!r} has no version {version!r}")
                if version == cat.active and len(cat.versions) > 1:
                    raise ServingError(Code.FAILED_PRECONDITION,
                                       f"version: {category}/{version} is the active version; activate another "
                                       "one first, or unregister the whole category")
                victims = [cat.versions[version]]
            else:
                victims = list(cat.versions.values())
            for entry in victims:
                if entry.version == SHIPPED:  # persisted first: if it fails, nothing was removed
                    try:
                        self._write_state(category, shipped_removed=entry.sha256)
                    except OSError as exc:
                        raise from_os_error(exc, f"unregistering {category}/{SHIPPED}") from None
            with self._state_lock:
                for entry in victims:
                    del cat.versions[entry.version]
                    entry.retired = True
                    if entry.leases:
                        self._retired.append(entry)
                if not cat.versions:
                    del self._categories[category]
            for entry in victims:
                self.cache.discard(entry.cache_key)
                self._delete_file(entry)
            if not cat.versions:
                self._cleanup_dir(category)
            log.info("unregistered %s versions %s", category, [e.version for e in victims])
            return [e.version for e in victims]

    def _delete_file(self, entry: VersionEntry) -> None:
        if entry.version == SHIPPED or entry.path is None:
            return  # a shipped file is never deleted (unregister remembered its content instead)
        try:
            entry.path.unlink(missing_ok=True)
        except OSError as exc:  # already out of view; only a restart would serve it again
            log.error("could not delete %s (%s); remove it by hand or it is served again after a restart",
                      entry.path, exc)

    def _cleanup_dir(self, category: str) -> None:
        state = self._read_state(category)
        path = self._category_dir(category)
        if state.get("shipped_removed"):
            with suppress(OSError):  # (only tidies: the active name is checked against what exists)
                self._write_state(category, active=None)
            return
        try:
            (path / STATE_FILE).unlink(missing_ok=True)
            path.rmdir()
        except OSError:
            pass  # something else lives there; harmless

    # ---------------------------------------------------------------------------- queries
    def _require(self, category: str) -> _Category:
        cat = self._categories.get(category)
        if cat is None or (cat.loading and not cat.versions):
            raise ServingError(Code.NOT_FOUND, f"category: no adapter registered for {category!r}")
        return cat

    def _status(self, cat: _Category) -> CategoryStatus:
        with self._state_lock:
            versions = tuple(cat.versions.values())
            active = cat.versions.get(cat.active) if cat.active else None
            retired = any(e.category == cat.name for e in self._retired)
            if cat.loading and not versions:
                state = LOADING
            elif active is not None and active.adapter is not None:
                state = READY
            elif retired and not versions:
                state = UNLOADING
            else:
                state = FAILED
            ref = active if active is not None and active.adapter is not None else next(
                (v for v in versions if v.adapter is not None), None)
            return CategoryStatus(
                name=cat.name,
                state=state,
                num_landmarks=ref.adapter.num_landmarks if ref else 0,
                input_size=ref.adapter.config.input_size if ref else self.core.config.input_size,
                active_version=cat.active or "",
                active_sha256=active.sha256 if active else "",
                core_sha256=self.core.sha256,
                versions=versions,
                error=cat.error if state == FAILED else "",
            )

    def list(self) -> list[CategoryStatus]:
        with self._state_lock:
            cats = list(self._categories.values())
            gone = {e.category for e in self._retired} - {c.name for c in cats}
        out = [self._status(c) for c in cats]
        with self._state_lock:
            for name in sorted(gone):
                entries = tuple(e for e in self._retired if e.category == name)
                if entries:
                    a = entries[0].adapter
                    out.append(CategoryStatus(name, UNLOADING, a.num_landmarks if a else 0,
                                              self.core.config.input_size, "", "", self.core.sha256, entries))
        return sorted(out, key=lambda s: s.name)

    def known(self, category: str) -> bool:
        """Registered (or still unloading): used to bound metric labels to real categories."""
        with self._state_lock:
            return category in self._categories or any(e.category == category for e in self._retired)

    def status(self, category: str) -> CategoryStatus:
        validate_category(category)
        return self._status(self._require(category))

    # ---------------------------------------------------------------------------- requests
    def input_size(self, category: str, version: str = "") -> int:
        """The input size the request's adapter version runs the core at, so the servicer crops the
        client's image once, at that size, as training did (the core's size if it is not known yet:
        `acquire` reports the error, and the engine resamples if the version changes in between)."""
        with self._state_lock:
            cat = self._categories.get(category)
            name = (version or cat.active) if cat is not None else None
            entry = cat.versions.get(name) if cat is not None and name else None
            if entry is None or entry.adapter is None:
                return self.core.config.input_size
            return entry.adapter.config.input_size

    @contextmanager
    def acquire(self, category: str, version: str = "") -> Iterator[VersionLease]:
        """Lease the version a request will use (the active one unless `version` is given)."""
        validate_category(category)
        if version:
            validate_version(version)
        with self._state_lock:
            cat = self._categories.get(category)
            if cat is None:
                if any(e.category == category for e in self._retired):
                    raise ServingError(Code.UNAVAILABLE, f"category: {category!r} is being unloaded")
                raise ServingError(Code.NOT_FOUND, f"category: no adapter registered for {category!r}")
            if cat.loading and not cat.versions:
                raise ServingError(Code.UNAVAILABLE, f"category: {category!r} is loading; retry shortly")
            name = version or cat.active
            entry = cat.versions.get(name) if name else None
            if entry is None:
                if version:
                    raise ServingError(Code.NOT_FOUND, f"version: {category!r} has no version {version!r}")
                if cat.error:
                    raise ServingError(Code.UNAVAILABLE, f"category: {category!r} failed to load: {cat.error}")
                raise ServingError(Code.UNAVAILABLE, f"category: {category!r} has no active version")
            if entry.adapter is None:
                raise ServingError(Code.UNAVAILABLE,
                                   f"category: {category}/{entry.version} failed to load: {entry.error}")
            entry.leases += 1
        try:
            yield VersionLease(entry)
        finally:
            with self._state_lock:
                entry.leases -= 1
                if entry.retired and entry.leases == 0 and entry in self._retired:
                    self._retired.remove(entry)
            if entry.retired and entry.leases == 0:
                self.cache.discard(entry.cache_key)
