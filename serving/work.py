"""What a batch worker runs: a queued request (`Pending`) or a whole lone RPC (`LeadTask`), and
the executor through which gRPC hands such RPCs to the batcher (`LeadFirstExecutor`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from typing import Any

import grpc

from serving.engine import Detection
from serving.errors import ItemError, Reason, ServingError
from serving.inputs import DetectInput

__all__ = ["LeadFirstExecutor", "LeadTask", "Pending", "prepared"]

Code = grpc.StatusCode


class Pending:
    """One queued request: its input, its deadline, and where its result goes."""

    __slots__ = ("_done", "cancelled", "deadline", "enqueued", "error", "item", "key", "result", "started")

    def __init__(self, item: DetectInput, deadline: float | None) -> None:
        self.item = item
        self.key = item.group
        self.deadline = deadline  # time.monotonic() value, or None
        self.enqueued = time.monotonic()
        self.started = 0.0
        self.cancelled = False
        self.result: Detection | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def cancel(self) -> None:
        """The client went away (gRPC callback): drop it if not computed yet, and free its waiter."""
        self.cancelled = True
        self.finish(error=ServingError(Code.CANCELLED, Reason.CANCELLED, "client cancelled the request"))

    def finish(self, result: Detection | None = None, error: BaseException | None = None) -> None:
        if not self._done.is_set():
            self.result, self.error = result, error
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Detection:
        if timeout is not None:  # no wait takes more (OverflowError); a deadline that far is none
            timeout = min(timeout, threading.TIMEOUT_MAX)
        if not self._done.wait(timeout):
            raise ServingError(Code.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED,
                               "deadline exceeded while waiting for the model")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class LeadTask:
    """A whole RPC handed to the lead worker by `LeadFirstExecutor`: gRPC's handler call and its future."""

    __slots__ = ("args", "fn", "future")

    def __init__(self, fn: Callable, args: tuple) -> None:
        self.fn, self.args, self.future = fn, args, Future()

    def run(self) -> None:
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.fn(*self.args))
            except BaseException as exc:  # noqa: BLE001  gRPC's handler function handles its own errors
                self.future.set_exception(exc)


def prepared(prepare: Callable[[Any], DetectInput], request: Any, index: int) -> DetectInput:
    """`prepare(request)`; its ServingError as the `ItemError` of item `index`."""
    try:
        return prepare(request)
    except ServingError as exc:
        raise ItemError(index, exc) from None


class LeadFirstExecutor(futures.ThreadPoolExecutor):
    """Where gRPC runs Detect and DetectBatch (its per-method `experimental_thread_pool`, which must
    be a ThreadPoolExecutor): on the lead worker when the batcher takes the RPC whole
    (`DynamicBatcher.lead`, reached through `lead(fn, args) -> Future | None`), else in the server's
    handler pool. Starts no threads of its own."""

    def __init__(self, lead: Callable[[Callable, tuple], Future | None], fallback: futures.ThreadPoolExecutor) -> None:
        super().__init__(max_workers=1)
        self._lead = lead
        self._fallback = fallback

    def submit(self, fn, /, *args, **kwargs):
        future = None if kwargs else self._lead(fn, args)
        return future if future is not None else self._fallback.submit(fn, *args, **kwargs)
