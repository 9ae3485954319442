"""AdapterRegistry: which adapter versions exist, which one is active, and who is using them.

The store on disk (`serving.store`) is the source of truth and a restart serves it again; the
prepared models live in `serving.models.FoldedModels`.

Registration validates everything before anything becomes visible: safetensors format (no
pickle), metadata, tensor names/shapes/dtypes, finite values, format version and core fingerprint
(`landmarks.adapter_io.load_adapter`), the size cap, K against the category's other versions,
and a trial forward pass (`FoldedModels.trial`). Versions are immutable: the same version with
the same content is an idempotent OK, with other content ALREADY_EXISTS.

A request `acquire()`s a lease on the version it starts with and carries it to the end;
unregistering removes a version from view at once (its category shows UNLOADING while leases
remain) and its model leaves the cache when the last lease ends. Admin operations are serialised
by one lock; the request path only takes a short state lock.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from pathlib import Path

import grpc

from landmarks import store_layout
from landmarks.adapter_io import Adapter, ArtifactError, Core, load_adapter
from serving.errors import Reason, ServingError, clip, from_artifact_error, from_os_error
from serving.models import FoldedModels
from serving.names import SHIPPED, validate_category, validate_version
from serving.server_paths import AllowedPaths
from serving.store import AdapterStore
from serving.versions import (
    FAILED,
    LOADING,
    READY,
    UNLOADING,
    CategoryRecord,
    CategoryStatus,
    VersionEntry,
    VersionLease,
)

__all__ = ["AdapterRegistry", "CategoryStatus", "VersionEntry", "VersionLease"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode

def _no_category(category: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, Reason.CATEGORY_NOT_FOUND, f"no adapter registered for {category!r}",
                        field="category", metadata={"category": category})


def _unavailable(category: str, why: str) -> ServingError:
    return ServingError(Code.UNAVAILABLE, Reason.CATEGORY_UNAVAILABLE, why, field="category",
                        metadata={"category": category})


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class AdapterRegistry:
    def __init__(self, core: Core, models: FoldedModels, store: AdapterStore, max_adapter_bytes: int = 64 << 20,
                 allowed_register_dirs: tuple[Path, ...] = ()) -> None:
        self.core = core
        self.models = models
        self.store = store
        self.max_adapter_bytes = max_adapter_bytes
        self.allowed_paths = AllowedPaths(allowed_register_dirs)
        self._categories: dict[str, CategoryRecord] = {}
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
        return adapter, self.models.trial(adapter, label)

    def _check_k(self, cat: CategoryRecord | None, adapter: Adapter, label: str) -> None:
        if cat is None:
            return
        for other in cat.versions.values():
            if other.adapter is not None and other.adapter.num_landmarks != adapter.num_landmarks:
                raise ServingError(
                    Code.FAILED_PRECONDITION, Reason.LANDMARK_COUNT_MISMATCH,
                    f"{label} has K={adapter.num_landmarks} landmarks but version {other.version!r} of "
                    f"{cat.name!r} has K={other.adapter.num_landmarks}; clients rely on K, so register it under "
                    "a new category or unregister the old versions first", field="adapter",
                    metadata={"category": cat.name})

    def _read_source(self, data: bytes | None, path: str | None) -> tuple[bytes, str]:
        if path:
            real = self.allowed_paths.resolve(path, "registration from server-side paths is disabled; send the "
                                                    "file bytes (data) or start the server with --allow-path DIR")
            try:
                if not real.is_file():
                    raise ServingError(Code.NOT_FOUND, Reason.PATH_NOT_FOUND, f"{clip(path)} is not a file",
                                       field="path")
                size = real.stat().st_size
                if size > self.max_adapter_bytes:
                    raise ServingError(Code.RESOURCE_EXHAUSTED, Reason.ADAPTER_TOO_LARGE,
                                       f"{clip(path)} is {size} bytes, over the "
                                       f"{self.max_adapter_bytes}-byte adapter limit", field="path")
                return real.read_bytes(), clip(path)
            except (OSError, ValueError) as exc:
                raise ServingError(Code.INVALID_ARGUMENT, Reason.PATH_INVALID, f"cannot read {clip(path)}: {exc}",
                                   field="path") from None
        if not data:
            raise ServingError(Code.INVALID_ARGUMENT, Reason.ADAPTER_MISSING,
                               "empty; send the adapter's .safetensors bytes or a path", field="data")
        return data, "the adapter bytes"

    # ---------------------------------------------------------------------------- start-up
    def load_store(self) -> None:
        """Load every adapter in the store (start-up). Bad files leave their version FAILED."""
        for category, versions in self.store.scan().items():
            state = self.store.read_state(category)
            cat = CategoryRecord(category)
            for version, path in versions.items():
                loaded = self._load_file(category, version, path, state)
                if loaded is None:
                    continue
                entry, prepared = loaded
                cat.versions[version] = entry
                if prepared is not None:
                    self.models.admit(entry.cache_key, prepared)
            if not cat.versions:
                continue
            self._pick_active(cat, state)
            self._categories[category] = cat
            log.info("category %s: versions %s, active %s", category, sorted(cat.versions), cat.active)

    def _load_file(self, category: str, version: str, path: Path,
                   state: dict) -> tuple[VersionEntry, object | None] | None:
        """A stored version, validated (FAILED with the reason if it is bad), and its prepared model;
        None for a shipped file that was unregistered."""
        label = f"{category}/{version} ({path})"
        created = _now()
        try:
            created = store_layout.created(path)
            data = path.read_bytes()
            adapter, prepared = self._validate_bytes(data, label)
        except (ServingError, OSError) as exc:
            message = getattr(exc, "message", str(exc))
            log.error("cannot load %s: %s", label, message)
            return VersionEntry(category, version, None, "", 0, created, path, error=message), None
        if version == SHIPPED and state.get("shipped_removed") == adapter.sha256:
            return None  # unregistered earlier; a different shipped file would come back
        return VersionEntry(category, version, adapter, adapter.sha256, len(data), created, path), prepared

    @staticmethod
    def _pick_active(cat: CategoryRecord, state: dict) -> None:
        """`landmarks.store_layout.pick_active`, the rule `landmarks.Detector` follows too (caller holds
        the state lock or owns `cat`)."""
        active = store_layout.pick_active(state, {v.version: v.created for v in cat.versions.values()},
                                          lambda version: cat.versions[version].adapter is not None)
        cat.active = active
        cat.error = ""
        if active is None or cat.versions[active].adapter is None:
            failed = [v.error for v in cat.versions.values() if v.error]
            cat.error = cat.versions[active].error if active else "; ".join(failed)

    def sync_store(self, category: str | None = None, admit: bool = False) -> bool:
        """Make this registry's view match the store, which another process may have changed, without
        writing to it: versions that appeared are validated and added (FAILED if bad, and not retried),
        versions whose files are gone, or a shipped file unregistered elsewhere, leave view as
        `unregister` removes them (requests holding them finish), and the active version follows the
        state file. `category`: only that one. `admit`: keep new versions' trial models in the cache
        (else they are folded on first use). Several servers on one store call this every few seconds
        (serving/ray_app.py); True if anything changed."""
        found = self.store.scan(sweep=False, category=category)
        changed = False
        with self._admin_lock:
            names = {category} if category else set(found) | set(self._categories)
            for name in sorted(names):
                versions = found.get(name, {})
                state = self.store.read_state(name)
                with self._state_lock:
                    cat = self._categories.get(name)
                    known = dict(cat.versions) if cat is not None else {}
                gone = [e for v, e in known.items()
                        if v not in versions or (v == SHIPPED and e.sha256 and state.get("shipped_removed") == e.sha256)]
                added: dict[str, VersionEntry] = {}
                for version, path in versions.items():
                    if version in known:
                        continue
                    loaded = self._load_file(name, version, path, state)
                    if loaded is not None:
                        added[version] = loaded[0]
                        if admit and loaded[1] is not None:
                            self.models.admit(loaded[0].cache_key, loaded[1])
                if cat is None and not added:
                    continue
                with self._state_lock:
                    if cat is None:
                        cat = self._categories[name] = CategoryRecord(name)
                    cat.versions.update(added)
                    self._drop(cat, gone)
                    before = cat.active
                    if cat.versions:
                        self._pick_active(cat, state)
                    else:
                        del self._categories[name]
                for entry in gone:
                    self.models.discard(entry.cache_key)  # (a leased one goes when its last lease ends)
                if added or gone or before != cat.active:
                    changed = True
                    log.info("store sync: %s +%s -%s, active %s", name, sorted(added),
                             [e.version for e in gone], cat.active)
        return changed

    def _drop(self, cat: CategoryRecord, victims: list[VersionEntry]) -> None:
        """(Under the state lock.) Take versions out of view; leased ones stay listed as UNLOADING."""
        for entry in victims:
            del cat.versions[entry.version]
            entry.retired = True
            if entry.leases:
                self._retired.append(entry)

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
                    cat = self._categories[category] = CategoryRecord(category, loading=True)
            try:
                adapter, prepared = self._validate_bytes(raw, label)
                existing = cat.versions.get(version)
                if existing is not None:
                    if existing.sha256 == adapter.sha256:
                        if activate and cat.active != version:
                            self._activate(cat, version)
                        return self._status(cat), False
                    raise ServingError(Code.ALREADY_EXISTS, Reason.VERSION_EXISTS,
                                       f"{category}/{version} already exists with other content "
                                       f"(sha256 {existing.sha256[:12]}, this file {adapter.sha256[:12]}); versions "
                                       "are immutable, register it under a new version", field="version",
                                       metadata={"category": category, "version": version})
                self._check_k(cat, adapter, label)
                make_active = activate or cat.active is None or cat.versions[cat.active].adapter is None
                try:
                    target = self.store.write_version(category, version, raw, activate=make_active)
                except OSError as exc:
                    raise from_os_error(exc, f"registering {category}/{version}") from None
                entry = VersionEntry(category, version, adapter, adapter.sha256, len(raw), _now(), target)
                self.models.admit(entry.cache_key, prepared)
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

    def _activate(self, cat: CategoryRecord, version: str) -> None:
        """Caller holds the admin lock. The state file first: if it cannot be written nothing changes."""
        try:
            self.store.write_state(cat.name, active=version)
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
                raise ServingError(Code.NOT_FOUND, Reason.VERSION_NOT_FOUND,
                                   f"{category!r} has no version {version!r} (it has {sorted(cat.versions)})",
                                   field="version", metadata={"category": category, "version": version})
            if entry.adapter is None:
                raise ServingError(Code.FAILED_PRECONDITION, Reason.VERSION_FAILED,
                                   f"{category}/{version} failed to load ({entry.error}); pick another",
                                   field="version", metadata={"category": category, "version": version})
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
                    raise ServingError(Code.NOT_FOUND, Reason.VERSION_NOT_FOUND,
                                       f"{category!r} has no version {version!r}", field="version",
                                       metadata={"category": category, "version": version})
                if version == cat.active and len(cat.versions) > 1:
                    raise ServingError(Code.FAILED_PRECONDITION, Reason.VERSION_ACTIVE,
                                       f"{category}/{version} is the active version; activate another "
                                       "one first, or unregister the whole category", field="version",
                                       metadata={"category": category, "version": version})
                victims = [cat.versions[version]]
            else:
                victims = list(cat.versions.values())
            for entry in victims:
                if entry.version == SHIPPED:  # persisted first: if it fails, nothing was removed
                    try:
                        self.store.write_state(category, shipped_removed=entry.sha256)
                    except OSError as exc:
                        raise from_os_error(exc, f"unregistering {category}/{SHIPPED}") from None
            with self._state_lock:
                self._drop(cat, victims)
                if not cat.versions:
                    del self._categories[category]
            for entry in victims:
                self.models.discard(entry.cache_key)
                self.store.delete_version(category, entry.version, entry.path)
            if not cat.versions:
                self.store.remove_category(category)
            log.info("unregistered %s versions %s", category, [e.version for e in victims])
            return [e.version for e in victims]

    # ---------------------------------------------------------------------------- queries
    def _require(self, category: str) -> CategoryRecord:
        cat = self._categories.get(category)
        if cat is None or (cat.loading and not cat.versions):
            raise _no_category(category)
        return cat

    def _status(self, cat: CategoryRecord) -> CategoryStatus:
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
    def acquire(self, category: str, version: str = "") -> VersionLease:
        """Lease the version a request will use (the active one unless `version` is given); the
        request crops at its input size and runs its model, whatever admin does meanwhile."""
        validate_category(category)
        if version:
            validate_version(version)
        with self._state_lock:
            cat = self._categories.get(category)
            if cat is None:
                if any(e.category == category for e in self._retired):
                    raise _unavailable(category, f"{category!r} is being unloaded")
                raise _no_category(category)
            if cat.loading and not cat.versions:
                raise _unavailable(category, f"{category!r} is loading; retry shortly")
            name = version or cat.active
            entry = cat.versions.get(name) if name else None
            if entry is None:
                if version:
                    raise ServingError(Code.NOT_FOUND, Reason.VERSION_NOT_FOUND,
                                       f"{category!r} has no version {version!r}", field="version",
                                       metadata={"category": category, "version": version})
                if cat.error:
                    raise _unavailable(category, f"{category!r} failed to load: {cat.error}")
                raise _unavailable(category, f"{category!r} has no active version")
            if entry.adapter is None:
                raise _unavailable(category, f"{category}/{entry.version} failed to load: {entry.error}")
            entry.leases += 1
        return VersionLease(self._release, entry)

    def _release(self, entry: VersionEntry) -> None:
        with self._state_lock:
            entry.leases -= 1
            if entry.retired and entry.leases == 0 and entry in self._retired:
                self._retired.remove(entry)
        if entry.retired and entry.leases == 0:
            self.models.discard(entry.cache_key)
