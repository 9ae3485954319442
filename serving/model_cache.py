"""ModelCache: prepared (folded) models per adapter version, bounded in bytes.

LRU over entries that no request is using; an entry in use (leased) is never evicted, and an
entry discarded while in use (its version was unregistered) is dropped when its last lease
ends. Concurrent misses for one key build it once. Counters: hits, misses, evictions.
No I/O here: the `build` callable given to `lease` does the folding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["CacheFullError", "CacheStats", "ModelCache"]


class CacheFullError(RuntimeError):
    """No room: everything resident is in use (serving: RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class CacheStats:
    capacity_bytes: int
    resident_bytes: int
    entries: int
    in_use: int
    hits: int
    misses: int
    evictions: int


@dataclass
class _Entry:
    value: Any
    nbytes: int
    leases: int = 0
    discarded: bool = False


class ModelCache:
    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self.capacity_bytes = int(capacity_bytes)
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._building: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()
        self._resident = 0
        self.hits = self.misses = self.evictions = 0

    # ------------------------------------------------------------------------------ internals
    def _make_room(self, nbytes: int) -> bool:
        """Evict unleased LRU entries until `nbytes` fit; True if they do. Caller holds the lock."""
        if self._resident + nbytes <= self.capacity_bytes:
            return True
        for key in list(self._entries):
            if self._resident + nbytes <= self.capacity_bytes:
                break
            entry = self._entries[key]
            if entry.leases == 0:
                del self._entries[key]
                self._resident -= entry.nbytes
                self.evictions += 1
        return self._resident + nbytes <= self.capacity_bytes

    def _insert(self, key: Hashable, value: Any, nbytes: int, leases: int) -> _Entry:
        if not self._make_room(nbytes):
            raise CacheFullError(
                f"folded-weights cache full: {self._resident} of {self.capacity_bytes} bytes in use by running "
                f"requests, {nbytes} more needed; retry later or raise the cache budget (--cache-mb)"
            )
        entry = _Entry(value, nbytes, leases)
        self._entries[key] = entry
        self._resident += nbytes
        return entry

    # --------------------------------------------------------------------------------- public
    def put(self, key: Hashable, value: Any, nbytes: int) -> bool:
        """Insert a ready value (warm-up after registration); False if it did not fit."""
        with self._lock:
            if key in self._entries:
                return True
            try:
                self._insert(key, value, nbytes, leases=0)
            except CacheFullError:
                return False
            return True

    @contextmanager
    def lease(self, key: Hashable, build: Callable[[], tuple[Any, int]]) -> Iterator[Any]:
        """Yield the value for `key`, building it with `build() -> (value, nbytes)` on a miss.

        The entry cannot be evicted until the `with` block ends.
        """
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and not entry.discarded:
                    entry.leases += 1
                    self._entries.move_to_end(key)
                    self.hits += 1
                    break
                waiting = self._building.get(key)
                if waiting is None:
                    self.misses += 1
                    done = self._building[key] = threading.Event()
                    break
            waiting.wait()
        if entry is None or entry.discarded:
            try:
                value, nbytes = build()
                with self._lock:
                    old = self._entries.pop(key, None)  # a discarded one still leased: keep it counted
                    if old is not None:
                        self._resident -= old.nbytes
                    entry = self._insert(key, value, nbytes, leases=1)
            finally:
                with self._lock:
                    self._building.pop(key, None)
                done.set()
        try:
            yield entry.value
        finally:
            with self._lock:
                entry.leases -= 1
                if entry.discarded and entry.leases == 0 and self._entries.get(key) is entry:
                    del self._entries[key]
                    self._resident -= entry.nbytes

    def discard(self, key: Hashable) -> None:
        """Forget `key` now, or when its last lease ends."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            if entry.leases == 0:
                del self._entries[key]
                self._resident -= entry.nbytes
            else:
                entry.discarded = True

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and not entry.discarded

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                capacity_bytes=self.capacity_bytes,
                resident_bytes=self._resident,
                entries=len(self._entries),
                in_use=sum(1 for e in self._entries.values() if e.leases),
                hits=self.hits,
                misses=self.misses,
                evictions=self.evictions,
            )
