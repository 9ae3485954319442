"""The server process's malloc: at most as many glibc arenas as cores.

glibc gives each thread that allocates under contention an arena of its own, up to 8 per core, and
returns an arena's free memory to the system only from its top. A server's handler threads, batch
workers and registrations allocate and free tens of MB each (decoded images, request buffers, a
session being built), so with 16 arenas its RSS swings by a fifth from one moment to the next with
no trend. Capped at the core count, the swing was 6% instead of 22% and the median 241 MB instead of
272 MB (`landmarks serve` with the shipped store, two Detect clients and a register / detect /
unregister loop, sampled every 0.25 s for 60 s, 2-core AMD EPYC; docs/reliability.md, "Soak").

`MALLOC_ARENA_MAX` in the environment wins (glibc reads it at start); elsewhere than glibc this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["cap_malloc_arenas"]

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # glibc's mallopt parameter


def cap_malloc_arenas(arenas: int | None = None) -> bool:
    """Cap glibc's malloc arenas (default: the cores this process may use); call before threads start.
    True if the cap was set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        return False
    n = arenas or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    ok = bool(mallopt(M_ARENA_MAX, n))
    if ok:
        log.debug("malloc arenas capped at %d", n)
    return ok
