"""Where a call goes on `landmarks serve-ray`: the routing both gRPC entries share (the front in
`serving.ray_front`, which `serve-ray` runs, and the Ingress deployment behind Ray's own gRPC proxy,
`serving.ray_app`, for Serve config files such as the KubeRay manifest).

A Detect names its model "category@version" (the active version when the request names none) and
goes, through Ray Serve's model multiplexing, to a replica that already holds that category folded.
A DetectBatch is split into one sub-batch per model, sent side by side; a failed item's index is
renumbered from its sub-batch into the client's batch. Admin calls go to the one Admin replica.

Every answer is an `Answer`: a status code name ("" for OK), the response bytes or the serialized
google.rpc.Status, and the trailing metadata `landmarks-replica` / `landmarks-held` per replica that
answered. The client's remaining time travels with each call: a replica drops work whose deadline has
passed, and a call the router stops waiting for is cancelled on its replica.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
from google.rpc import code_pb2, status_pb2  # (google.rpc.Code names gRPC's codes)
from ray.exceptions import RayError, RayTaskError

from landmarks.v1 import landmarks_pb2 as pb
from serving.errors import ItemError, Reason, ServingError, error_info, renumber
from serving.ray_replicas import model_id

__all__ = ["ADMIN_RESPONSES", "Answer", "Router"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode

ADMIN_RESPONSES = {"RegisterAdapter": pb.RegisterAdapterResponse, "SetActiveVersion": pb.CategoryInfo,
                   "UnregisterAdapter": pb.UnregisterAdapterResponse, "ListCategories": pb.ListCategoriesResponse,
                   "ServerInfo": pb.ServerInfoResponse}


@dataclass
class Answer:
    code: str                 # "" or a grpc.StatusCode name
    payload: bytes            # the response, or the serialized google.rpc.Status of the error
    metadata: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def error(cls, error: ServingError, metadata=()) -> Answer:
        return cls(error.code.name, error.status().SerializeToString(), list(metadata))

    def status(self) -> status_pb2.Status:
        return status_pb2.Status.FromString(self.payload)


def _item_index(status: status_pb2.Status) -> int | None:
    """The sub-batch item a replica's DetectBatch error is about (ErrorInfo metadata "index")."""
    info = error_info(status)
    index = info.metadata.get("index", "") if info is not None else ""
    return int(index) if index.isdigit() else None


def _expired() -> ServingError:
    return ServingError(Code.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED,
                        "the deadline passed before a replica answered; retry with a longer deadline")


class Router:
    """Routes calls to the replicas and the admin replica through their deployment handles. Thread-safe:
    each call blocks its caller's thread only (the front's handler threads, the Ingress's executor)."""

    def __init__(self, replicas, admin, sync_s: float, max_batch_items: int) -> None:
        self.replicas, self.admin = replicas, admin
        self.sync_s, self.max_batch_items = sync_s, max_batch_items
        self._active: dict[str, str] = {}
        self._gone: dict[str, float] = {}  # category -> when this router saw it unregistered
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            from ray.serve.metrics import Counter

            self._counter = Counter("landmarks_multiplex_requests", "Detect items by whether the replica "
                                    "that served them already held the category", tag_keys=("held",))
        except Exception:  # noqa: BLE001  metrics are optional
            self._counter = None
        # the active versions, re-read every sync_s in the background: requests route by the last known
        threading.Thread(target=self._watch_active, name="landmarks-active-versions", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def _watch_active(self) -> None:
        while True:
            try:
                self._set_active(self.admin.active_versions.remote().result(timeout_s=max(5.0, 5 * self.sync_s)))
            except Exception:  # the admin replica restarting, a timeout: keep the last known
                log.warning("could not read the active versions; routing by the last known", exc_info=True)
            if self._stop.wait(self.sync_s):
                return

    # ------------------------------------------------------------------------------ inference
    def _set_active(self, active: dict[str, str]) -> None:
        with self._lock:
            now = time.monotonic()
            for category in set(self._active) - set(active):
                self._gone[category] = now
            for category in list(self._gone):
                if category in active or now - self._gone[category] > max(10.0, 10 * self.sync_s):
                    del self._gone[category]  # registered again, or every replica has long seen it go
            self._active = active

    def _pin(self, req: pb.DetectRequest) -> tuple[str, pb.DetectRequest]:
        """(model id, the request with the version it is routed to): a request that names no version goes
        to the active one as this router knows it, and says so, so the replica computes that version even
        if its own view of the store is a moment older (read-your-writes for this front's admin calls)."""
        version = req.version or self._active.get(req.category, "")
        if version and not req.version:
            pinned = pb.DetectRequest()
            pinned.CopyFrom(req)
            pinned.version = version
            req = pinned
        return model_id(req.category, version), req

    def _gone_error(self, req: pb.DetectRequest) -> ServingError | None:
        """A category this router saw unregistered is NOT_FOUND at once, as on the single server (the
        replicas stop serving it within sync_s)."""
        if not req.version and req.category in self._gone and req.category not in self._active:
            return ServingError(Code.NOT_FOUND, Reason.CATEGORY_NOT_FOUND,
                                f"no adapter registered for {req.category!r}", field="category",
                                metadata={"category": req.category})
        return None

    def _send(self, method: str, request, mid: str, deadline: float | None):
        return self.replicas.options(multiplexed_model_id=mid).detect.remote(
            method, request.SerializeToString(), None if deadline is None else deadline - time.monotonic())

    def _receive(self, response, mid: str, deadline: float | None) -> tuple[str, bytes, bool, str]:
        """-> (code name or "", response bytes or a serialized google.rpc.Status, held, replica)."""
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            return response.result(timeout_s=timeout)
        except TimeoutError:
            response.cancel()  # the replica drops what it has not computed yet
            error = _expired()
        except RayTaskError:
            log.exception("replica failed")
            error = ServingError(Code.INTERNAL, Reason.INTERNAL, "internal error in a replica; see the Ray logs")
        except RayError as exc:  # the replica died or is unreachable: another one will take a retry
            error = ServingError(Code.UNAVAILABLE, Reason.SERVER_UNAVAILABLE,
                                 f"the replica serving {mid or 'this request'} went away ({type(exc).__name__}); retry")
        return error.code.name, error.status().SerializeToString(), False, ""

    def _count(self, held: bool, n: int = 1) -> None:
        if self._counter is not None:
            self._counter.inc(n, tags={"held": "1" if held else "0"})

    def detect(self, request: pb.DetectRequest, timeout: float | None = None) -> Answer:
        deadline = None if timeout is None else time.monotonic() + timeout
        if (gone := self._gone_error(request)) is not None:
            return Answer.error(gone)
        mid, request = self._pin(request)
        code, payload, held, replica = self._receive(self._send("Detect", request, mid, deadline), mid, deadline)
        if not code:
            self._count(held)
        return Answer(code, payload, [("landmarks-replica", replica), ("landmarks-held", str(int(held)))])

    def detect_batch(self, request: pb.DetectBatchRequest, timeout: float | None = None) -> Answer:
        n = len(request.requests)
        if n > self.max_batch_items:
            return Answer.error(ServingError(Code.INVALID_ARGUMENT, Reason.BATCH_TOO_LARGE,
                                             f"{n} items, over this server's limit of {self.max_batch_items}; "
                                             "split the batch", field="requests"))
        deadline = None if timeout is None else time.monotonic() + timeout
        for i, item in enumerate(request.requests):
            if (gone := self._gone_error(item)) is not None:
                return Answer.error(ItemError(i, gone).for_batch())
        groups: dict[str, list[int]] = {}
        items = []
        for i, item in enumerate(request.requests):
            mid, item = self._pin(item)
            items.append(item)
            groups.setdefault(mid, []).append(i)
        # one sub-batch per model, all sent before any is awaited, each to a replica holding its category
        sent = [(mid, idx, self._send("DetectBatch", pb.DetectBatchRequest(
            requests=[items[i] for i in idx]), mid, deadline)) for mid, idx in groups.items()]
        out: list[pb.DetectResponse | None] = [None] * n
        errors: list[tuple[int, status_pb2.Status]] = []
        metadata = []
        for mid, idx, response in sent:
            code, payload, held, replica = self._receive(response, mid, deadline)
            metadata += [("landmarks-replica", replica), ("landmarks-held", str(int(held)))]
            if code:
                # the item's index in its sub-batch -> in the client's batch; an error about the whole
                # group (its category, from folding) is about its first item, as the single server says
                status = status_pb2.Status.FromString(payload)
                old = _item_index(status)
                old = old if old is not None and old < len(idx) else None
                first = idx[old] if old is not None else idx[0]
                errors.append((first, renumber(status, first, old)))
                continue
            self._count(held, len(idx))
            for i, r in zip(idx, pb.DetectBatchResponse.FromString(payload).responses):
                out[i] = r
        if errors:
            status = min(errors, key=lambda e: e[0])[1]
            return Answer(code_pb2.Code.Name(status.code), status.SerializeToString(), metadata)
        return Answer("", pb.DetectBatchResponse(responses=out).SerializeToString(), metadata)

    # ---------------------------------------------------------------------------------- admin
    def admin_call(self, method: str, request, timeout: float | None = None) -> Answer:
        try:
            code, payload, active = self.admin.call.remote(method, request.SerializeToString()).result(
                timeout_s=timeout)
        except TimeoutError:
            return Answer.error(_expired())
        except RayError as exc:
            return Answer.error(ServingError(Code.UNAVAILABLE, Reason.SERVER_UNAVAILABLE,
                                             f"the admin replica is unavailable ({type(exc).__name__}); retry"))
        self._set_active(active)
        if not code and method == "ServerInfo":
            import ray

            info = pb.ServerInfoResponse.FromString(payload)
            info.versions["ray"] = ray.__version__
            payload = info.SerializeToString()
        return Answer(code, payload)

