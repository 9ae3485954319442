"""Adaptation jobs: a new category (or a new version of one) trained inside the server from photos.

    submit(category, files, options) -> Job (queued)    the images checked and written (serving.uploads)
    get / list / cancel / watch / samples

A job's files live in ADAPTERS/.jobs/<id>/ (options.json, images/, run/: checkpoints, samples.png),
its record in ADAPTERS/.jobs/jobs.sqlite3 (serving.job_store). `--adaptation-workers` threads each
run one job at a time in a child process, `python -m training.job` (the training code and torch stay
out of the server's process), at a lower CPU priority (`--adaptation-nice`) and with
`--adaptation-threads` threads, so inference keeps answering. The child trains, scores held-out
images and calibrates int8; the server then registers the adapter as version `job-<id>` of the
category through the registry (every check a RegisterAdapter gets), and makes it active only if the
job asked (`activate`) and the validation passed the floors below (a brand-new category's first
version is active whatever they say, as with any registration).

A restart finds the jobs that were queued or running and runs them again: training resumes from
the job's last checkpoint. Cancelling kills the child and deletes the job's files; the record stays.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import grpc

from serving.errors import Reason, ServingError, clip
from serving.job_store import ACTIVE_STATES, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, JobStore
from serving.names import validate_category
from serving.server_paths import AllowedPaths
from serving.uploads import Upload, UploadLimits, take_images

__all__ = ["MIN_SPREAD_PX", "PRESET_BATCH", "AdaptationLimits", "Adaptations", "ChildProcesses", "Trainer", "Training",
           "kill_job_process", "start_job_process", "torch_installed"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode
MIB = 1 << 20
JOBS_DIR = ".jobs"
STORE_FILE = "jobs.sqlite3"
# training.adapt's presets by their batch size (a job needs one batch of training images besides the
# held-out ones); tests check this against training.adapt.PRESETS, which the server must not import
PRESET_BATCH = {"cpu": 16, "quick": 16, "paper": 48, "smoke": 2}
DEFAULT_PRESET = "cpu"
# validation floors for activation: points whose spread (RMS distance from their centroid, px at 128)
# is under this have collapsed onto one spot, whatever the consistency says
MIN_SPREAD_PX = 1.0
OPTIONS = {"preset": str, "steps": int, "activate": bool, "num_landmarks": int, "names": str, "image_size": int,
           "path": str}
INSTALL = "pip install 'landmark-adapters[train]'"


def torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # blocked (an import hook, a None entry in sys.modules)
        return False


@dataclass(frozen=True)
class AdaptationLimits:
    workers: int = 1
    threads: int = 1
    nice: int = 10
    min_images: int = 10
    quota_bytes: int = 20 * 1024 * MIB
    max_steps: int = 1_000_000
    device: str = "auto"
    allowed_dirs: tuple[Path, ...] = ()  # server folders a job may read its images from (--allow-path)
    admin: bool = True  # False: --no-admin, and jobs are admin work
    upload: UploadLimits = field(default_factory=UploadLimits)


def _job_not_found(job_id: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, Reason.JOB_NOT_FOUND, f"no adaptation job {clip(job_id)}", field="id",
                        metadata={"id": job_id[:64]})


def _option_error(name: str, message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, Reason.OPTION_INVALID, message, field=name)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise _option_error(name, f"expected true or false, got {clip(value)}")


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class Adaptations:
    """The server's adaptation jobs; `close()` stops the workers (running jobs resume at the next start)."""

    def __init__(self, adapters_dir: Path, core_path: Path, limits: AdaptationLimits,
                 registry: Callable[[], object], trainer: Trainer | None = None) -> None:
        self.dir = Path(adapters_dir) / JOBS_DIR
        self.core_path, self.limits, self._registry = Path(core_path), limits, registry
        self.enabled = limits.workers > 0
        self._store: JobStore | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._changed = threading.Condition()
        self._revision = 0
        self._trainer = trainer or ChildProcesses()
        self._children: dict[str, Training] = {}
        self._submit_lock = threading.Lock()  # starting: the torch probe, the store, the workers
        self._upload_lock = threading.Lock()
        self._finish_lock = threading.Lock()  # a job is cancelled, or registered, not both
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._torch: bool | None = None  # probed once, when jobs are first needed (never by a plain start)
        if self.enabled and (self.dir / STORE_FILE).is_file():  # jobs a restart interrupted go on
            try:
                self._start()
            except ServingError as exc:
                log.warning("adaptation jobs in %s wait: %s", self.dir, exc.message)

    def _start(self) -> JobStore:
        """Probe torch, open (or make) the job store, queue what a restart interrupted, start the workers."""
        with self._submit_lock:
            if self._torch is None:
                self._torch = torch_installed()
            if not self._torch:
                raise ServingError(Code.FAILED_PRECONDITION, Reason.ADAPTATION_UNAVAILABLE,
                                   f"adaptation jobs need the training extra (torch) on the server: {INSTALL}")
            if self._store is not None:
                return self._store
            try:
                store = JobStore(self.dir / STORE_FILE)
            except (OSError, sqlite3.Error) as exc:
                raise ServingError(Code.UNAVAILABLE, Reason.STORE_UNAVAILABLE,
                                   f"cannot open the job store {self.dir / STORE_FILE}: {exc}") from None
            for job in store.list(ACTIVE_STATES):
                log.info("adaptation job %s (%s) was %s; running it again from its checkpoint",
                         job.id, job.category, job.state)
                store.update(job.id, state=QUEUED, phase="")
                self._queue.put(job.id)
            self._store = store
            for i in range(self.limits.workers):
                thread = threading.Thread(target=self._work, name=f"landmarks-adapt-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)
            return store

    # ------------------------------------------------------------------------------ requests
    def require(self) -> JobStore:
        """The job store, or FAILED_PRECONDITION saying why jobs are off."""
        if not self.limits.admin:  # as the gRPC service, which --no-admin does not serve
            raise ServingError(Code.UNIMPLEMENTED, Reason.ADMIN_DISABLED,
                               "this server runs with --no-admin: no admin calls, adaptation jobs included")
        if not self.enabled:
            raise ServingError(Code.FAILED_PRECONDITION, Reason.ADAPTATION_UNAVAILABLE,
                               "adaptation jobs are off on this server (--adaptation-workers 0)")
        return self._store if self._store is not None else self._start()

    def parse_options(self, category: str, given: dict[str, str]) -> dict:
        """The job's options from the strings a client sent; INVALID_ARGUMENT naming a bad one."""
        unknown = sorted(set(given) - set(OPTIONS))
        if unknown:
            raise _option_error(unknown[0], f"unknown option(s) {', '.join(map(clip, unknown))}; the options are "
                                f"{', '.join(OPTIONS)}")
        options: dict = {"preset": DEFAULT_PRESET, "activate": False}
        for name, value in given.items():
            kind = OPTIONS[name]
            if kind is bool:
                options[name] = _parse_bool(name, value)
            elif kind is int:
                if value.strip() == "":
                    continue
                try:
                    options[name] = int(value)
                except ValueError:
                    raise _option_error(name, f"expected a whole number, got {clip(value)}") from None
            else:
                options[name] = value.strip()
        if options["preset"] not in PRESET_BATCH:
            raise _option_error("preset", f"unknown preset {clip(options['preset'])}; choose one of "
                                f"{', '.join(sorted(PRESET_BATCH))}")
        if "steps" in options and not 1 <= options["steps"] <= self.limits.max_steps:
            raise _option_error("steps", f"must be between 1 and {self.limits.max_steps}, got {options['steps']}")
        if "image_size" in options and not 16 <= options["image_size"] <= 512:
            raise _option_error("image_size", f"must be between 16 and 512 px, got {options['image_size']}")
        known_k = self._category_k(category)
        k = options.get("num_landmarks") or known_k or 10
        if not 1 <= k <= 64:
            raise _option_error("num_landmarks", f"must be between 1 and 64, got {k}")
        if known_k and k != known_k:
            raise _option_error("num_landmarks", f"{category!r} has K={known_k}; a new version must have the same "
                                "K (or name a new category)")
        options["num_landmarks"] = k
        names = [n.strip() for n in options.get("names", "").split(",") if n.strip()]
        if names and len(names) != k:
            raise _option_error("names", f"{len(names)} names for {k} landmarks; give one per landmark")
        return options

    def _category_k(self, category: str) -> int:
        try:
            return int(self._registry().status(category).num_landmarks)
        except ServingError:
            return 0

    def submit(self, category: str, files: Iterable[tuple[str, BinaryIO]], options: dict[str, str]) -> Job:
        """Check everything, write the images, queue the job; nothing is left behind if it is refused."""
        store = self.require()
        validate_category(category)
        parsed = self.parse_options(category, options)
        if parsed.get("path"):
            files = itertools.chain(files, self._server_files(parsed.pop("path")))
        job_id = secrets.token_hex(6)
        folder = self.dir / job_id
        with self._upload_lock:  # one upload at a time against the quota
            try:
                upload = take_images(files, folder / "images", self.limits.upload)
                self._check_count(upload, parsed["preset"])
                used = _folder_bytes(self.dir)
                if used > self.limits.quota_bytes:
                    raise ServingError(Code.RESOURCE_EXHAUSTED, Reason.STORE_FULL,
                                       f"adaptation jobs hold {used} bytes with this upload, over the quota of "
                                       f"{self.limits.quota_bytes} (--adaptation-quota-mb); cancel or wait for "
                                       "other jobs, or send fewer images")
                held = max(2, min(300, upload.kept // 5))
                child = {**parsed, "category": category, "held_out": held, "threads": self.limits.threads,
                         "device": self.limits.device}
                (folder / "options.json").write_text(json.dumps(child, indent=1))
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            job = store.add(Job(job_id, category, steps=parsed.get("steps", 0), options=parsed,
                                upload=upload.to_json()))
        log.info("adaptation job %s: %s from %d images (%s)", job_id, category, upload.kept, parsed)
        self._queue.put(job_id)
        self._notify()
        return job

    def _server_files(self, path: str) -> Iterator[tuple[str, BinaryIO]]:
        """The files of a server folder (or one .zip) inside --allow-path, each open while it is read;
        files whose real path leaves the allowed directories (symbolic links) are not read."""
        allowed = AllowedPaths(self.limits.allowed_dirs)
        real = allowed.resolve(path, "reading images from server paths is disabled; upload them, or start the "
                                     "server with --allow-path DIR")
        if not real.exists():
            raise ServingError(Code.NOT_FOUND, Reason.PATH_NOT_FOUND, f"{clip(path)}: no such folder or file",
                               field="path")
        found = [real] if real.is_file() else sorted(
            p for p in real.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(real).parts))
        for file in found:
            if not allowed.contains(Path(os.path.realpath(file))):  # a link out of the allowed directories
                continue
            with open(file, "rb") as handle:
                yield file.name, handle

    def _check_count(self, upload: Upload, preset: str) -> None:
        need = max(self.limits.min_images, PRESET_BATCH[preset] + 2)
        if upload.kept < need:
            skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in sorted(upload.skipped.items()))
            raise ServingError(Code.INVALID_ARGUMENT, Reason.TOO_FEW_IMAGES,
                               f"{upload.kept} usable image{'' if upload.kept == 1 else 's'}"
                               f"{f' (skipped: {skipped})' if skipped else ''}; a job "
                               f"with preset {preset!r} needs at least {need} (JPEG, PNG, WebP or BMP, each side at "
                               f"least {self.limits.upload.min_image_side} px)", field="images")

    def get(self, job_id: str) -> Job:
        job = self.require().get(job_id)
        if job is None:
            raise _job_not_found(job_id)
        return job

    def list(self) -> list[Job]:
        return self.require().list()

    def cancel(self, job_id: str) -> Job:
        """Stop the job (its child killed) and delete its files; a cancelled job answers as it is."""
        store = self.require()
        with self._finish_lock:
            job = self.get(job_id)
            if job.state == CANCELLED:
                return job
            if job.finished or job.phase == "registering":
                raise ServingError(Code.FAILED_PRECONDITION, Reason.JOB_FINISHED,
                                   f"job {job_id} {'already ' + job.state if job.finished else 'is being registered'}; "
                                   "unregister its version to remove it", field="id", metadata={"id": job_id})
            store.update(job_id, state=CANCELLED, phase="")
        child = self._children.get(job_id)
        if child is not None:
            child.kill()
        self._delete_files(job_id)
        log.info("adaptation job %s cancelled", job_id)
        self._notify()
        return self.get(job_id)

    def samples(self, job_id: str) -> bytes:
        self.get(job_id)
        for path in (self.dir / job_id / "samples.png", self.dir / job_id / "run" / "samples.png"):
            with contextlib.suppress(OSError):
                return path.read_bytes()
        raise ServingError(Code.NOT_FOUND, Reason.JOB_NOT_FOUND,
                           f"job {job_id} has no samples picture yet (it is drawn every few steps)", field="id")

    def watch(self, job_id: str, poll_s: float = 15.0) -> Iterator[Job | None]:
        """The job now, then each time it changes, until it has finished; None every `poll_s` seconds
        without a change (a keep-alive; lets a caller notice a client that left)."""
        last: tuple | None = None
        revision = -1
        while True:
            job = self.get(job_id)
            key = (job.state, job.step, job.steps, job.phase, job.version, job.error)
            if key != last:
                last = key
                yield job
            if job.finished or self._closing:
                return
            with self._changed:
                if self._revision == revision:
                    self._changed.wait(poll_s)
                    if self._revision == revision:
                        yield None
                revision = self._revision

    def close(self) -> None:
        """Stop: the children are killed, their jobs stay running in the store (the next start resumes them)."""
        self._closing = True
        for child in list(self._children.values()):
            child.kill()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(10)
        self._notify()
        if self._store is not None:
            self._store.close()

    # ------------------------------------------------------------------------------ workers
    def _notify(self) -> None:
        with self._changed:
            self._revision += 1
            self._changed.notify_all()

    def _update(self, job_id: str, **changes) -> None:
        self._store.update(job_id, **changes)  # type: ignore[union-attr]
        self._notify()

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._closing:
                return
            job = self._store.get(job_id)  # type: ignore[union-attr]
            if job is None or job.state != QUEUED:
                continue  # cancelled while queued
            try:
                self._run(job)
            except Exception as exc:  # a bug: the job fails with it, the worker goes on
                log.exception("adaptation job %s failed", job_id)
                if not self._closing:
                    self._update(job_id, state=FAILED, error=f"internal error: {exc}")

    def _run(self, job: Job) -> None:
        folder = self.dir / job.id
        with self._finish_lock:  # not if it was cancelled since it was queued
            if self._store.get(job.id).state != QUEUED:  # type: ignore[union-attr]
                return
            self._update(job.id, state=RUNNING, phase="starting")
        child = self._trainer.start(folder, self.core_path, self.limits)
        self._children[job.id] = child
        if self._store.get(job.id).state == CANCELLED:  # type: ignore[union-attr]  cancelled while it started
            child.kill()
        report: dict = {}
        try:
            for line in child.lines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "step":
                    self._update(job.id, step=int(event["step"]), steps=int(event["steps"]), phase="training")
                elif event.get("event") == "phase":
                    self._update(job.id, phase=str(event["phase"]))
                elif event.get("event") in ("done", "error"):
                    report = event
            returncode = child.wait()
        finally:
            self._children.pop(job.id, None)
            child.close()
        current = self._store.get(job.id)  # type: ignore[union-attr]
        if current is None or current.state == CANCELLED:
            self._delete_files(job.id)  # again: what the child wrote before it was killed
            return
        if self._closing:
            return  # the server is stopping: the job resumes at the next start
        if report.get("event") != "done":
            why = report.get("message") or f"the training process ended with status {returncode}"
            tail = _tail(folder / "worker.log")
            log.warning("adaptation job %s failed: %s\n%s", job.id, why, tail)
            self._update(job.id, state=FAILED, phase="", error=why)
            return
        self._register(job, report)

    def _register(self, job: Job, report: dict) -> None:
        validation, calibration = report.get("validation", {}), report.get("calibration", {})
        with self._finish_lock:
            if self._store.get(job.id).state == CANCELLED:  # type: ignore[union-attr]
                return
            self._update(job.id, phase="registering", validation=validation, calibration=calibration,
                         step=int(report.get("steps", job.steps)), steps=int(report.get("steps", job.steps)))
        passed = validation.get("spread", 0.0) >= MIN_SPREAD_PX
        version = f"job-{job.id}"
        try:
            data = Path(report["adapter"]).read_bytes()
            status, _ = self._registry().register(job.category, version, data=data,
                                                  activate=bool(job.options.get("activate")) and passed)
        except (ServingError, OSError) as exc:
            why = exc.message if isinstance(exc, ServingError) else str(exc)
            self._update(job.id, state=FAILED, phase="", error=f"registering {job.category}/{version}: {why}")
            return
        validation = {**validation, "passed": passed, "floors": {"spread": MIN_SPREAD_PX}}
        self._update(job.id, state=SUCCEEDED, phase="", version=version, validation=validation,
                     activated=status.active_version == version)
        self._keep_samples_only(job.id)  # after the record: a restart in between must not rerun a job without images
        log.info("adaptation job %s: registered %s/%s%s", job.id, job.category, version,
                 " [active]" if status.active_version == version else "")

    def _keep_samples_only(self, job_id: str) -> None:
        folder = self.dir / job_id
        with contextlib.suppress(OSError):
            shutil.copyfile(folder / "run" / "samples.png", folder / "samples.png")
        for name in ("images", "run"):
            shutil.rmtree(folder / name, ignore_errors=True)

    def _delete_files(self, job_id: str) -> None:
        shutil.rmtree(self.dir / job_id, ignore_errors=True)


class Training(Protocol):
    """One job's training, wherever it runs: its output lines (JSON events, as `training.job` prints
    them), its end, and a kill that leaves nothing of it running."""

    def lines(self) -> Iterator[str]: ...
    def wait(self) -> int: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


class Trainer(Protocol):
    def start(self, folder: Path, core: Path, limits: AdaptationLimits) -> Training: ...


class ChildProcess:
    """`python -m training.job` in a child process of the server, in a session of its own."""

    def __init__(self, folder: Path, core: Path, limits: AdaptationLimits) -> None:
        self.process = start_job_process(folder, core, limits.threads, limits.nice, stdout=subprocess.PIPE)

    def lines(self) -> Iterator[str]:
        yield from self.process.stdout  # type: ignore[misc]

    def wait(self) -> int:
        return self.process.wait()

    def kill(self) -> None:
        kill_job_process(self.process)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdout.close()  # type: ignore[union-attr]


class ChildProcesses:
    """`landmarks serve`'s trainer: each job in a child process of the server."""

    def start(self, folder: Path, core: Path, limits: AdaptationLimits) -> Training:
        return ChildProcess(folder, core, limits)


def start_job_process(folder: Path, core: Path, threads: int, nice: int, stdout) -> subprocess.Popen:
    """`python -m training.job FOLDER` with `threads` torch threads, `nice`, its log in FOLDER/worker.log
    and its events to `stdout`; a session of its own, so that a kill takes all it started."""
    root = Path(__file__).resolve().parents[1]  # where `training` lives beside `serving`
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p))
    with open(folder / "worker.log", "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "training.job", str(folder), "--core", str(core), "--nice", str(nice)],
            stdout=stdout, stderr=log_file, stdin=subprocess.DEVNULL, env=env, cwd=root,
            start_new_session=True, text=True)


def kill_job_process(child: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(child.pid, signal.SIGKILL)  # its own session: nothing it started survives it
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(10)


def _tail(path: Path, chars: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""

