"""AdaptationService: the adaptation jobs (serving.adaptations) over gRPC; protos <-> Python values.

StartAdaptation is a client stream (options, then file chunks): the chunks are spooled to temporary
files (in memory up to 8 MiB each), counted against --max-adaptation-upload-mb as they arrive, and
handed to `Adaptations.submit` as the HTTP plane hands it its form's files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from concurrent import futures

import grpc

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc
from serving.adaptations import Adaptations
from serving.errors import Reason, ServingError, grpc_handler
from serving.job_store import Job

__all__ = ["AdaptationServicer", "job_to_proto"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode
_SPOOL_BYTES = 8 << 20


def job_to_proto(job: Job) -> pb.AdaptationJob:
    numbers = {k: float(v) for k, v in job.validation.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    calibration = {k: float(v) for k, v in job.calibration.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
    return pb.AdaptationJob(
        id=job.id, category=job.category, state=job.state, step=job.step, steps=job.steps, phase=job.phase,
        validation=numbers, validation_passed=bool(job.validation.get("passed")),
        calibration_accepted=bool(job.calibration.get("accepted")), calibration=calibration,
        images=int(job.upload.get("images", 0)), skipped={k: int(v) for k, v in job.upload.get("skipped", {}).items()},
        version=job.version, activated=job.activated, error=job.error, created=job.created, updated=job.updated)


def _options(message: pb.AdaptationOptions) -> dict[str, str]:
    """The options a client set, as the strings a form would carry (0 and "" = not given)."""
    given = {"activate": "true" if message.activate else "false"}
    for name in ("preset", "names", "path"):
        if getattr(message, name):
            given[name] = getattr(message, name)
    for name in ("steps", "num_landmarks", "image_size"):
        if getattr(message, name):
            given[name] = str(getattr(message, name))
    return given


class AdaptationServicer(pb_grpc.AdaptationServiceServicer):
    """`pool`: the threads that run StartAdaptation (an upload may take minutes) and WatchAdaptation
    (as long as the job), so that they never hold the handler threads Detect needs."""

    def __init__(self, adaptations: Adaptations, pool: futures.ThreadPoolExecutor | None = None) -> None:
        self.adaptations = adaptations
        if pool is not None:  # gRPC runs a method on the pool its handler names (experimental_thread_pool)
            for name in ("StartAdaptation", "WatchAdaptation"):
                method = getattr(self, name)
                call = functools.wraps(method)(lambda request, context, method=method: method(request, context))
                call.experimental_thread_pool = pool
                setattr(self, name, call)

    @grpc_handler
    def StartAdaptation(self, request_iterator, context):
        service = self.adaptations
        service.require()
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "options":
            raise ServingError(Code.INVALID_ARGUMENT, Reason.REQUEST_INVALID,
                               "the first message must carry the options (category, preset, ...), then the images' "
                               "chunks", field="options")
        limits = service.limits.upload
        files: list[tuple[str, tempfile.SpooledTemporaryFile]] = []
        received = 0
        try:
            for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise ServingError(Code.INVALID_ARGUMENT, Reason.REQUEST_INVALID,
                                       "options may only come first; later messages carry file chunks", field="options")
                chunk = message.chunk
                received += len(chunk.data)
                if received > limits.max_upload_bytes:
                    raise ServingError(Code.RESOURCE_EXHAUSTED, Reason.UPLOAD_TOO_LARGE,
                                       f"the upload is over {limits.max_upload_bytes} bytes "
                                       "(--max-adaptation-upload-mb); send fewer or smaller images", field="chunk")
                if chunk.name or not files:
                    if len(files) > limits.max_images:
                        raise ServingError(Code.RESOURCE_EXHAUSTED, Reason.UPLOAD_TOO_LARGE,
                                           f"more than {limits.max_images} files (--max-adaptation-images); send "
                                           "fewer", field="chunk")
                    files.append((chunk.name, tempfile.SpooledTemporaryFile(_SPOOL_BYTES)))  # noqa: SIM115  closed below
                files[-1][1].write(chunk.data)
            for _, file in files:
                file.seek(0)
            job = service.submit(first.options.category, files, _options(first.options))
        finally:
            for _, file in files:
                with contextlib.suppress(OSError):
                    file.close()
        return job_to_proto(job)

    @grpc_handler
    def GetAdaptation(self, request, context):
        return job_to_proto(self.adaptations.get(request.id))

    @grpc_handler
    def ListAdaptations(self, request, context):
        return pb.ListAdaptationsResponse(jobs=[job_to_proto(j) for j in self.adaptations.list()])

    def WatchAdaptation(self, request, context):
        try:
            for job in self.adaptations.watch(request.id, poll_s=5.0):
                if not context.is_active():
                    return
                if job is not None:
                    yield job_to_proto(job)
        except ServingError as exc:
            exc.abort(context)
        except Exception:
            log.exception("WatchAdaptation failed")
            ServingError(Code.INTERNAL, Reason.INTERNAL, "internal error in WatchAdaptation; see the server log"
                         ).abort(context)

    @grpc_handler
    def CancelAdaptation(self, request, context):
        return job_to_proto(self.adaptations.cancel(request.id))
