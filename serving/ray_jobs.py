"""Adaptation jobs on `landmarks serve-ray`: the single server's jobs (serving.adaptations: uploads,
options, the SQLite job store, validation floors, cancel, resume after a restart), with the training
run as a Ray task and the result registered through the admin replica.

    front (AdaptationService) -> Adaptations --RayTasks--> Ray task on any node with the resources
                                      |                      (--adaptation-threads CPUs, --adaptation-gpus)
                                      |                      runs `python -m training.job` beside it
                                      +--AdminRegistry--> the admin replica: RegisterAdapter, as any client

A job's files live in the shared store (ADAPTERS/.jobs/<id>/), which every node reads and writes as
the replicas read the adapters; the task appends the job's events to ADAPTERS/.jobs/<id>/events.jsonl
and the front follows that file, so the front keeps no connection to the task but its reference.
The replicas serve the registered version as they serve any registration (within --sync-s).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import ray

from landmarks.v1 import landmarks_pb2 as pb
from serving.adaptations import AdaptationLimits, kill_job_process, start_job_process
from serving.errors import Reason, ServingError, error_info
from serving.ray_router import Router

__all__ = ["AdminRegistry", "RayTasks"]

EVENTS = "events.jsonl"


@ray.remote(max_retries=0)
def _train(folder: str, core: str, threads: int, nice: int) -> int:
    """On a Ray worker: the job's training process, its events appended to FOLDER/events.jsonl; its exit
    status. Cancelling the task (KeyboardInterrupt here) kills the process and all it started."""
    with open(Path(folder) / EVENTS, "a") as events:
        child = start_job_process(Path(folder), Path(core), threads, nice, stdout=events)
        try:
            return child.wait()
        finally:
            if child.poll() is None:
                kill_job_process(child)


class RayTask:
    def __init__(self, folder: Path, core: Path, limits: AdaptationLimits, gpus: float) -> None:
        self.events = folder / EVENTS
        self.ref = _train.options(num_cpus=max(1, limits.threads), num_gpus=gpus).remote(
            str(folder), str(core), limits.threads, limits.nice)
        self._returncode: int | None = None

    def _finished(self, timeout: float) -> bool:
        if self._returncode is None:
            done, _ = ray.wait([self.ref], timeout=timeout)
            if done:
                try:
                    self._returncode = int(ray.get(self.ref))
                except (ray.exceptions.RayError, ValueError):  # cancelled, or its worker died
                    self._returncode = -1
        return self._returncode is not None

    def lines(self) -> Iterator[str]:
        """The events file's lines as they are written, until the task has ended and all are read."""
        position, partial = 0, ""
        while True:
            finished = self._finished(0.5)
            with contextlib.suppress(OSError), open(self.events) as f:
                f.seek(position)
                text = f.read()
                position = f.tell()
                *complete, partial = (partial + text).split("\n")
                yield from (line + "\n" for line in complete)
            if finished:
                return

    def wait(self) -> int:
        while not self._finished(1.0):
            pass
        return self._returncode  # type: ignore[return-value]

    def kill(self) -> None:
        ray.cancel(self.ref)  # KeyboardInterrupt in the task: it kills its training process
        deadline = time.monotonic() + 10
        while not self._finished(0.5) and time.monotonic() < deadline:
            pass
        if self._returncode is None:
            ray.cancel(self.ref, force=True)

    def close(self) -> None:
        pass


@dataclass
class RayTasks:
    """The trainer of `serve-ray`: each job a Ray task asking for `gpus` GPUs (a fraction shares one)."""
    gpus: float = 0.0

    def start(self, folder: Path, core: Path, limits: AdaptationLimits) -> RayTask:
        return RayTask(folder, core, limits, self.gpus)


@dataclass
class _Status:
    num_landmarks: int
    active_version: str


class AdminRegistry:
    """What the jobs need of a registry (`status`, `register`), answered by the admin replica."""

    def __init__(self, router: Router) -> None:
        self.router = router

    @staticmethod
    def _raise(answer) -> None:
        status = answer.status()
        info = error_info(status)
        reason = Reason.INTERNAL
        if info is not None:
            with contextlib.suppress(ValueError):
                reason = Reason(info.reason)
        raise ServingError(grpc.StatusCode[answer.code], reason, status.message)

    def status(self, category: str) -> _Status:
        answer = self.router.admin_call("ListCategories", pb.ListCategoriesRequest(), 60.0)
        if answer.code:
            self._raise(answer)
        for info in pb.ListCategoriesResponse.FromString(answer.payload).categories:
            if info.name == category:
                return _Status(info.num_landmarks, info.active_version)
        raise ServingError(grpc.StatusCode.NOT_FOUND, Reason.CATEGORY_NOT_FOUND,
                           f"no adapter registered for {category!r}", field="category")

    def register(self, category: str, version: str, data: bytes, activate: bool = True) -> tuple[_Status, bool]:
        answer = self.router.admin_call("RegisterAdapter", pb.RegisterAdapterRequest(
            category=category, version=version, data=data, activate=activate), 300.0)
        if answer.code:
            self._raise(answer)
        reply = pb.RegisterAdapterResponse.FromString(answer.payload)
        return _Status(reply.category.num_landmarks, reply.category.active_version), reply.created
