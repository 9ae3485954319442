"""Which server threads may run torch on several cores: only the lead batch worker (with the torch
backends; the default, ONNX Runtime, sets each session's threads itself and needs no torch, so where
torch is not loaded these calls change nothing).

PyTorch's OpenMP runtime (libgomp) gives every Python thread that runs a large enough torch op its
own pool of worker threads, and once the workers of all pools outnumber the cores it stops
spinning between parallel regions: every op of a forward pass then pays a futex wake-up
(docs/benchmark.md, "Threads", has the measurement).
In the server, gRPC handler threads (image to tensor) and the main thread (loading the core) would
each create such a pool.

Policy: the lead batch worker (serving.batching, "Cores") is the only thread that ever runs torch on
several threads, and only for a forward pass that runs alone; the other batch workers and every
other thread that touches torch (decoding, registration, loading) run on one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from landmarks.runtime.sessions import default_threads

__all__ = ["DEFAULT_COMPUTE_THREADS", "ComputeThreads", "compute_thread", "handler_thread", "single_threaded"]

DEFAULT_COMPUTE_THREADS = default_threads()  # the physical cores, as torch and ONNX Runtime choose


def _set_this_thread(threads: int) -> None:
    torch = sys.modules.get("torch")  # only a torch backend loads it; without it there is no pool to set
    if torch is None:
        return
    # ATen sets each thread's OpenMP thread count lazily, from the process-wide value, at the
    # thread's first parallel op; trigger that first so it cannot undo the setting below.
    torch.get_num_threads()
    torch.set_num_threads(threads)


def single_threaded() -> None:
    """This thread runs torch ops on one core and never creates an OpenMP pool."""
    _set_this_thread(1)


def compute_thread(threads: int | None = None) -> None:
    """This thread (a batch worker) runs torch ops on `threads` cores (default: torch's choice)."""
    _set_this_thread(threads or DEFAULT_COMPUTE_THREADS)


def handler_thread(nice: int = 0) -> None:
    """A gRPC handler thread: single-threaded torch and, with `nice` > 0, a lower CPU priority.

    An OpenMP parallel region waits for its slowest thread, so when a handler thread preempts one
    of a batch worker's OpenMP threads mid-op the whole forward stalls for a time slice; a
    higher nice value for handlers (Linux: per thread) lets the forward finish first.
    """
    single_threaded()
    if nice > 0 and hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):  # not permitted here: run at the process's priority
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


@dataclass(frozen=True)
class ComputeThreads:
    """How many torch threads a worker's forward pass uses, and how to set them in a thread."""

    alone: int = 1  # the lead worker's forward with nothing else running or due
    shared: int = 1  # every other forward
    apply: Callable[[int], None] | None = None  # sets this thread's torch threads (serving.threads)

    @classmethod
    def split(cls, threads: int, workers: int, apply: Callable[[int], None] | None) -> ComputeThreads:
        return cls(alone=threads, shared=max(1, threads // workers), apply=apply)
