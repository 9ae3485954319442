"""Dynamic batching: a bounded queue in front of `InferenceEngine.run_group`, and the one place
that decides where a request computes.

A call (`serving.calls`, for gRPC and HTTP alike) makes one call, `run(requests, prepare, deadline,
on_cancel)`: the batcher prepares (decodes) each request, then either computes them at once in the
calling thread, when that thread is the lead worker running a lone RPC (below), or queues them and
waits for their results, the deadline or the client's cancellation. A request's own failure comes
back as an `ItemError` naming its index in the call (a DetectBatch names it to the client).

Queued work: each worker thread (`workers`, default 2) takes the oldest queued request, gathers
every queued request of the same group (leased adapter version) up to `max_batch_size`, and runs
them as one forward pass. Batches form by themselves while the previous batch computes; on top of
that the worker waits up to `max_queue_delay` for more of a group *only while other requests are
still being prepared and no other group is queued*, so a lone request is never delayed for company
that is not coming, and a worker never idles while other categories' requests wait.

Lone requests: gRPC schedules Detect and DetectBatch through `LeadFirstExecutor`; an RPC that
arrives while nothing is queued, preparing or computing becomes a `LeadTask`, a work item of its
own that the lead worker runs whole (prepare, compute on all threads, answer) in its own thread:
the queue's two hand-offs (handler -> worker -> handler) are thread wake-ups that cost a good
part of a millisecond after idleness (docs/benchmark.md). Requests of the same group that queue
while it decodes join its forward pass.

Cores (`ComputeThreads`): worker 0, the lead, takes every batch it can; the other workers take
one only while the lead is computing, i.e. under load. A batch the lead runs alone (nothing else
computing, nothing left in the queue or being decoded) gets all the compute threads, which is fastest for a lone
request; under load every worker runs on its share (threads // workers), so that the workers'
forward passes run side by side instead of splitting every op between cores. Only the lead ever
uses several threads because each thread that does gets its own OpenMP pool, and once the pools
outnumber the cores libgomp stops spinning between ops (serving.threads). On the 2-core project
machine two single-threaded forward passes at once served more requests per second at concurrency
16 than one on both cores (docs/benchmark.md); that needs a backend that releases the GIL
(TorchScript, the default).

Admission and dropping:
- the queue holds at most `max_queue` requests; one more is refused with RESOURCE_EXHAUSTED;
- a DetectBatch (several items) that does not fit waits for room instead, up to its deadline
  (`max_admission_wait_s` without one), and holds the room as it frees up: requests arriving
  meanwhile are admitted only into room beyond it. One such batch waits at a time; another that
  does not fit is refused at once. Under steady load a DetectBatch of up to `max_queue` items is
  therefore admitted once the queue ahead of it has drained, instead of never;
- a request whose deadline has passed (DEADLINE_EXCEEDED) or whose client went away
  (CANCELLED; the call wires `context.add_callback` to `Pending.cancel`) is dropped at
  flush, before any compute, or earlier, when the queue is full: such requests never hold
  a slot that a live request needs;
- a batch that fails with an unexpected error is retried one request at a time, so one bad
  request never fails its batch-mates; a `ServingError` from `run_group` is about the group's
  category/version (NOT_FOUND, UNAVAILABLE, cache full) and is given to each of its requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import grpc

from serving.config import BatchConfig
from serving.engine import Detection, InferenceEngine
from serving.errors import ItemError, Reason, ServingError
from serving.inputs import DetectInput
from serving.threads import ComputeThreads
from serving.work import LeadTask, Pending, prepared

__all__ = ["DynamicBatcher"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode


class _NullMetrics:
    def pending(self, n: int) -> None: ...
    def batch(self, category: str, size: int) -> None: ...
    def dropped(self, category: str, outcome: str) -> None: ...


class DynamicBatcher:
    def __init__(self, engine: InferenceEngine, config: BatchConfig, metrics=None,
                 threads: ComputeThreads | None = None) -> None:
        """`threads.apply` is called in a worker thread before a forward pass whenever the thread count
        it should use changes (none: leave torch's threads alone)."""
        self.engine = engine
        self.threads = threads or ComputeThreads()
        self.config = config
        self.metrics = metrics or _NullMetrics()
        self._arriving = 0  # requests being decoded that will be submitted soon
        self._computing = 0  # workers running a batch
        self._lead_busy = False
        self._queue: deque[Pending] = deque()
        # one lock, two wait lists: a request wakes only the worker that will take it (the lead when
        # it is idle, else one helper), not every worker; at concurrency 1 each needless wake-up is
        # a thread that wants the GIL just as the forward pass starts
        self._lock = threading.Lock()
        self._lead_wake = threading.Condition(self._lock)
        self._helpers_wake = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)  # the queue shrank (a DetectBatch may wait for room)
        self._reserved = 0  # slots held for the one request waiting for room
        self._lead_task: LeadTask | None = None  # a whole RPC handed to the lead, not yet taken
        self._local = threading.local()  # each worker's current torch thread count
        self._closed = False
        self._draining = False
        self.computed = 0      # requests that reached a forward pass (tests, bench)
        self.batches = 0
        self._threads = [threading.Thread(target=self._loop, args=(i == 0,), name=f"landmarks-batch-{i}", daemon=True)
                         for i in range(self.config.workers)]
        for t in self._threads:
            t.start()

    # ---------------------------------------------------------------------------- clients
    def run(self, requests: Sequence[Any], prepare: Callable[[Any], DetectInput], deadline: float | None = None,
            on_cancel: Callable[[Callable[[], None]], bool] | None = None) -> list[Detection]:
        """Prepare each request (`prepare(request) -> DetectInput`, raising ServingError for a bad
        one) and compute them all; the results in order. `deadline` is a time.monotonic() value;
        `on_cancel(callback)` registers a callback for a client that goes away (gRPC's
        `context.add_callback`, False if it already has). A request's own failure (its input, its
        category, its deadline) raises an `ItemError` naming its index; a failure of the whole call (the
        queue is full, the server is shutting down) a plain ServingError."""
        if deadline is not None and deadline <= time.monotonic():  # (a deadline spent before it got here)
            raise ItemError(0, ServingError(Code.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED,
                                            "the deadline passed before the request reached a batch worker; "
                                            "not computed"))
        if threading.current_thread() is self._threads[0]:  # a lone RPC handed over by LeadFirstExecutor
            return self._run_inline([prepared(prepare, r, i) for i, r in enumerate(requests)])
        n = len(requests)
        with self._lock:
            self._arriving += n  # a worker may wait for these to batch them with what is queued
        try:
            items = [prepared(prepare, r, i) for i, r in enumerate(requests)]
        finally:
            with self._lock:
                self._arriving -= n
                if self._arriving <= 0 and self._queue:  # a worker may be waiting for them
                    self._wake()
        pending = self.submit(items, deadline)

        def cancel() -> None:
            for p in pending:
                p.cancel()

        if on_cancel is not None and not on_cancel(cancel):  # the client went away: drop what is not computed
            cancel()
        out = []
        for i, p in enumerate(pending):
            try:
                out.append(p.wait(None if deadline is None else max(0.0, deadline - time.monotonic())))
            except ServingError as exc:
                cancel()  # all or nothing: the rest need not run (or this one's deadline passed while it ran)
                raise ItemError(i, exc) from None
            except BaseException:
                cancel()
                raise
        return out

    def submit(self, items: list[DetectInput], deadline: float | None = None) -> list[Pending]:
        """Queue `items` atomically (all or none); RESOURCE_EXHAUSTED if they do not fit."""
        pending = [Pending(it, deadline) for it in items]
        n = len(pending)
        with self._lock:
            if self._closed:
                raise ServingError(Code.UNAVAILABLE, Reason.SERVER_UNAVAILABLE, "server is shutting down")
            if n > self._free():  # make room first: requests nobody waits for do not hold a slot
                self._purge_dead()
            if n > self._free():
                if n == 1 or self._reserved or n > self.config.max_queue:
                    raise self._queue_full(n)
                self._wait_for_room(n, deadline)
            self._queue.extend(pending)
            self.metrics.pending(len(self._queue))
            self._wake()
        return pending

    def _free(self) -> int:
        """(Under the lock.) Slots a new request may take: room not held for a waiting DetectBatch."""
        return self.config.max_queue - len(self._queue) - self._reserved

    def _queue_full(self, n: int) -> ServingError:
        held = f", {self._reserved} held for a waiting DetectBatch" if self._reserved else ""
        return ServingError(
            Code.RESOURCE_EXHAUSTED, Reason.QUEUE_FULL,
            f"request queue full ({len(self._queue)} of {self.config.max_queue} waiting{held}"
            + (f", {n} more asked" if n > 1 else "") + "); retry with backoff")

    def _wait_for_room(self, n: int, deadline: float | None) -> None:
        """(Under the lock.) Hold room for `n` items as it frees up, until it is all there (see the
        module notes); DEADLINE_EXCEEDED / UNAVAILABLE if the deadline or a shutdown comes first."""
        limit = time.monotonic() + self.config.max_admission_wait_s
        end = limit if deadline is None else min(deadline, limit)
        self._reserved = n
        try:
            while self.config.max_queue - len(self._queue) < n:
                if self._closed or self._draining:
                    raise ServingError(Code.UNAVAILABLE, Reason.SERVER_UNAVAILABLE, "server is shutting down")
                left = end - time.monotonic()
                if left <= 0:
                    expired = deadline is not None and deadline <= limit
                    raise ServingError(Code.DEADLINE_EXCEEDED if expired else Code.RESOURCE_EXHAUSTED,
                                       Reason.DEADLINE_EXCEEDED if expired else Reason.QUEUE_FULL,
                                       f"waited for room for {n} items in the request queue "
                                       f"({len(self._queue)} of {self.config.max_queue} taken); not computed")
                self._room.wait(left)
        finally:
            self._reserved = 0

    def lead(self, fn: Callable, args: tuple) -> Future | None:
        """(LeadFirstExecutor.) Hand `fn(*args)`, a whole RPC, to the lead worker if nothing else is
        queued, preparing or computing; None: busy, the caller runs it in a handler thread as usual."""
        with self._lock:
            if (self._closed or self._draining or self._lead_busy
                    or self._computing or self._queue or self._arriving > 0):
                return None
            task = self._lead_task = LeadTask(fn, args)
            self._lead_busy = True  # from now on other requests go to the helpers
            self._computing += 1
            self._lead_wake.notify()
            return task.future

    def _run_inline(self, items: list[DetectInput]) -> list[Detection]:
        """(On the lead, in an RPC it was handed.) Compute the RPC's items now. Requests of the same
        group that queued up meanwhile (its decoding took a while) join its batch, as they would
        have in the queue; the forward runs on all threads unless a helper is computing too."""
        own = [Pending(it, None) for it in items]
        groups: dict[tuple, list[Pending]] = {}
        for p in own:
            groups.setdefault(p.key, []).append(p)
        size = self.config.max_batch_size
        for key, group in groups.items():
            for start in range(0, len(group), size):
                batch = group[start:start + size]
                with self._lock:
                    if len(batch) < size and self._queue:
                        batch = batch + self._pop_group(key, size - len(batch))
                    alone = self._computing == 1 and not self._queue
                self._use_threads(alone)
                self._run(batch)
        out = []
        for i, p in enumerate(own):
            try:
                out.append(p.wait(0))
            except ServingError as exc:
                raise ItemError(i, exc) from None
        return out

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def drain(self) -> None:
        """Shutting down: flush without waiting for company."""
        with self._lock:
            self._draining = True
            self._wake_all()
            self._room.notify_all()

    def close(self, timeout: float | None = 5.0) -> None:
        """Refuse new work, fail what is still queued with UNAVAILABLE, stop the workers."""
        with self._lock:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self.metrics.pending(0)
            self._wake_all()
            self._room.notify_all()
        for p in left:
            p.finish(error=ServingError(Code.UNAVAILABLE, Reason.SERVER_UNAVAILABLE,
                                        "server shut down before this request ran"))
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ----------------------------------------------------------------------------- worker
    def _wake(self) -> None:
        """(Under the lock.) Wake the worker that would take the queue's head: the lead if idle, else a helper."""
        (self._helpers_wake if self._lead_busy else self._lead_wake).notify()

    def _wake_all(self) -> None:
        self._lead_wake.notify_all()
        self._helpers_wake.notify_all()

    def _pop_group(self, key: tuple[str, str], n: int) -> list[Pending]:
        """(Under the lock.) Remove and return the first `n` queued requests of group `key`."""
        group = [p for p in self._queue if p.key == key][:n]
        taken = set(map(id, group))
        self._queue = deque(p for p in self._queue if id(p) not in taken)
        self.metrics.pending(len(self._queue))
        if self._reserved:
            self._room.notify()
        return group

    def _take(self, lead: bool) -> tuple[list[Pending] | LeadTask, bool] | None:
        """Block until work is due: (a batch or a lead task, whether it runs alone); None when closed.

        Only the lead worker takes work while no batch is computing (see the module notes)."""
        cfg = self.config
        delay = cfg.max_queue_delay_ms / 1e3
        wake = self._lead_wake if lead else self._helpers_wake
        with self._lock:
            while True:
                if lead and self._lead_task is not None:  # (handed over before any close: run it)
                    task, self._lead_task = self._lead_task, None
                    return task, True
                if self._closed:
                    return None
                if not self._queue or not (lead or self._lead_busy):
                    wake.wait()
                    continue
                head = self._queue[0]
                same = [p for p in self._queue if p.key == head.key]
                due = head.enqueued + delay
                now = time.monotonic()
                # wait for company only with nothing else to do: when other groups are queued (mixed
                # categories), idling for the head's would leave a core unused
                if (len(same) >= cfg.max_batch_size or self._draining or now >= due or len(same) < len(self._queue)
                        or self._arriving <= 0 or len(self._queue) >= cfg.max_queue):
                    batch = self._pop_group(head.key, cfg.max_batch_size)
                    alone = lead and self._computing == 0 and not self._queue and self._arriving <= 0
                    self._computing += 1
                    if lead:
                        self._lead_busy = True
                    if self._queue:  # a helper may take what is left
                        self._helpers_wake.notify()
                    return batch, alone
                wake.wait(due - now)

    def _use_threads(self, alone: bool) -> None:
        """(In a worker.) Set this thread's torch threads for a forward that runs alone or shared."""
        want = self.threads.alone if alone else self.threads.shared
        if want != self._local.__dict__.get("threads") and self.threads.apply is not None:
            self.threads.apply(want)  # (a fraction of a microsecond: no cost to switch per batch)
            self._local.threads = want

    def _loop(self, lead: bool) -> None:
        while True:
            taken = self._take(lead)
            if taken is None:
                return
            work, alone = taken
            try:
                self._use_threads(alone)
                if isinstance(work, LeadTask):
                    work.run()
                else:
                    self._run(work)
            except BaseException as exc:  # never let the worker die; each request gets an answer
                log.exception("batch worker failed")
                for p in work if isinstance(work, list) else ():
                    p.finish(error=exc)
            finally:
                with self._lock:
                    self._computing -= 1
                    if lead:
                        self._lead_busy = False

    def _drop_if_dead(self, p: Pending, now: float) -> bool:
        """Finish `p` without computing it if its deadline passed or its client went away."""
        category = p.item.entry.category
        if p.deadline is not None and now >= p.deadline:  # (gRPC also cancels it: count it as expired)
            self.metrics.dropped(category, "deadline_exceeded")
            p.finish(error=ServingError(Code.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED,
                                        f"deadline passed after {(now - p.enqueued) * 1e3:.1f} ms in the queue; "
                                        "not computed"))
            return True
        if p.cancelled:
            self.metrics.dropped(category, "cancelled")
            p.finish(error=ServingError(Code.CANCELLED, Reason.CANCELLED, "client cancelled the request"))
            return True
        return False

    def _purge_dead(self) -> None:
        """(Under the lock, queue full.) Remove expired and cancelled requests from the queue."""
        now = time.monotonic()
        self._queue = deque(p for p in self._queue if not self._drop_if_dead(p, now))
        self.metrics.pending(len(self._queue))

    def _live(self, batch: list[Pending]) -> list[Pending]:
        now = time.monotonic()
        live = []
        for p in batch:
            if not self._drop_if_dead(p, now):
                p.started = now
                live.append(p)
        return live

    def _run(self, batch: list[Pending]) -> None:
        live = self._live(batch)
        if not live:
            return
        category = live[0].item.entry.category
        self.metrics.batch(category, len(live))
        self.batches += 1
        self.computed += len(live)
        try:
            results = self.engine.run_group([p.item for p in live])
        except ServingError as exc:  # about the category/version: the same for every request in the group
            for p in live:
                p.finish(error=exc)
            return
        except Exception:
            if len(live) == 1:
                raise
            log.warning("a batch of %d %s requests failed; running them one at a time", len(live), category,
                        exc_info=True)
            for p in live:
                try:
                    (res,) = self.engine.run_group([p.item])
                except Exception as exc:  # noqa: BLE001  this request's own failure
                    if not isinstance(exc, ServingError):
                        log.error("request for %s failed: %r", category, exc)
                    p.finish(error=exc)
                else:
                    self._finish_ok(p, res)
            return
        for p, res in zip(live, results):
            self._finish_ok(p, res)

    @staticmethod
    def _finish_ok(p: Pending, res: Detection) -> None:
        res.queue_ms += (p.started - p.enqueued) * 1e3
        p.finish(result=res)
