"""The server's errors: one exception type that carries its gRPC status and structured details.

Everything below the servicers raises `ServingError(code, reason, message, field=...)` for anything a
client did or asked; any other exception reaching a servicer is a bug and becomes INTERNAL.

Each error goes out as a `google.rpc.Status` (gRPC: the `grpc-status-details-bin` trailer, read with
`grpc_status.rpc_status.from_call`; HTTP: the JSON body's `details`) with

    ErrorInfo   reason (a `Reason` below: stable, for programs to branch on), domain "landmarks.v1",
                metadata: "index" (the DetectBatch item it is about) and what else is known
                ("category", "version")
    BadRequest  one field violation naming the request field (e.g. "requests[1].image.encoded"),
                when one field is to blame (not for a transient state: UNAVAILABLE, deadlines)

A DetectBatch item's own failure is an `ItemError` (raised by serving.batching), which says which
item; `ItemError.for_batch` turns it into the error the client gets, its field path and message
prefixed with "requests[i]".
"""

from __future__ import annotations

import enum
import errno
import functools
import logging

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from landmarks import text
from landmarks.adapter_io import (
    ArtifactError,
    BatchNormError,
    CoreMismatchError,
    MetadataError,
    NonFiniteError,
    NotSafetensorsError,
    TensorMismatchError,
    TooLargeError,
)

__all__ = ["DETAILS_KEY", "DOMAIN", "ItemError", "Reason", "ServingError", "clip", "from_artifact_error", "from_os_error",
           "grpc_handler", "renumber", "status_json"]

Code = grpc.StatusCode
DOMAIN = "landmarks.v1"  # ErrorInfo.domain: the API's package
DETAILS_KEY = "grpc-status-details-bin"  # the trailer that carries the google.rpc.Status
# the request was fine, the moment was not: no BadRequest, whatever field the message names
_TRANSIENT = (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.INTERNAL)


class Reason(str, enum.Enum):
    """ErrorInfo.reason of every failure kind the server reports (the value is the wire string)."""

    # the request: its image, box and names
    IMAGE_MISSING = "IMAGE_MISSING"                # no image.encoded / image.raw, or an empty one
    IMAGE_UNDECODABLE = "IMAGE_UNDECODABLE"        # not a JPEG/PNG/WebP/BMP, or truncated / corrupt
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"            # over --max-image-mp
    IMAGE_TOO_SMALL = "IMAGE_TOO_SMALL"            # a side under the server's minimum, or not positive
    RAW_IMAGE_INVALID = "RAW_IMAGE_INVALID"        # image.raw: channels, or pixels not H*W*C bytes
    BOX_INVALID = "BOX_INVALID"                    # not finite, empty, outside the image, too large
    CATEGORY_INVALID = "CATEGORY_INVALID"          # not a valid category name
    VERSION_INVALID = "VERSION_INVALID"            # not a valid version name (or the reserved one)
    REQUEST_INVALID = "REQUEST_INVALID"            # any other malformed request (HTTP parameters)
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"            # DetectBatch over --max-batch-items
    BODY_TOO_LARGE = "BODY_TOO_LARGE"              # HTTP body over --max-message-mb
    # what is served
    CATEGORY_NOT_FOUND = "CATEGORY_NOT_FOUND"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    CATEGORY_UNAVAILABLE = "CATEGORY_UNAVAILABLE"  # loading, unloading, failed to load, no active version
    # the server's state and capacity
    SERVER_UNAVAILABLE = "SERVER_UNAVAILABLE"      # starting, failed to load, shutting down
    QUEUE_FULL = "QUEUE_FULL"
    CACHE_FULL = "CACHE_FULL"                      # no room for the folded model (all leased)
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    # tokens and planes
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    ADMIN_TOKEN_REQUIRED = "ADMIN_TOKEN_REQUIRED"  # the inference token on an admin call
    ADMIN_DISABLED = "ADMIN_DISABLED"              # --no-admin
    # registration: the adapter file
    ADAPTER_MISSING = "ADAPTER_MISSING"            # neither data nor path
    ADAPTER_NOT_SAFETENSORS = "ADAPTER_NOT_SAFETENSORS"
    ADAPTER_METADATA_INVALID = "ADAPTER_METADATA_INVALID"
    ADAPTER_TENSORS_INVALID = "ADAPTER_TENSORS_INVALID"        # names, shapes, dtypes
    ADAPTER_NON_FINITE = "ADAPTER_NON_FINITE"                  # NaN / Inf in a tensor
    ADAPTER_BATCHNORM_INVALID = "ADAPTER_BATCHNORM_INVALID"    # a negative running_var
    ADAPTER_CORE_MISMATCH = "ADAPTER_CORE_MISMATCH"            # trained against another core
    ADAPTER_TOO_LARGE = "ADAPTER_TOO_LARGE"
    ADAPTER_INVALID = "ADAPTER_INVALID"                        # any other unusable file
    ADAPTER_TRIAL_FAILED = "ADAPTER_TRIAL_FAILED"              # its trial forward gave bad heatmaps
    LANDMARK_COUNT_MISMATCH = "LANDMARK_COUNT_MISMATCH"        # K differs from the category's versions
    # registration: paths, versions, the store
    PATH_REGISTRATION_DISABLED = "PATH_REGISTRATION_DISABLED"  # no --allow-path
    PATH_NOT_ALLOWED = "PATH_NOT_ALLOWED"                      # outside the --allow-path directories
    PATH_INVALID = "PATH_INVALID"
    PATH_NOT_FOUND = "PATH_NOT_FOUND"
    VERSION_EXISTS = "VERSION_EXISTS"                          # same version, other content
    VERSION_FAILED = "VERSION_FAILED"                          # activating a version that failed to load
    VERSION_ACTIVE = "VERSION_ACTIVE"                          # unregistering the active one of several
    STORE_FULL = "STORE_FULL"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    # adaptation jobs (serving.adaptations)
    ADAPTATION_UNAVAILABLE = "ADAPTATION_UNAVAILABLE"          # no training extra (torch), or --adaptation-workers 0
    UPLOAD_EMPTY = "UPLOAD_EMPTY"                              # no images sent
    UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"                      # over --max-adaptation-images / -upload-mb
    UPLOAD_UNSAFE = "UPLOAD_UNSAFE"                            # a zip entry outside the folder, a zip bomb
    TOO_FEW_IMAGES = "TOO_FEW_IMAGES"                          # fewer usable images than a job needs
    OPTION_INVALID = "OPTION_INVALID"                          # an unknown option, or a bad value
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    JOB_FINISHED = "JOB_FINISHED"                              # cancelling a job that already ended
    # a bug (never a client's doing)
    INTERNAL = "INTERNAL"


class ServingError(Exception):
    """`message` is what the client reads; with `field`, it starts "field: " (the field the request got
    wrong, as a BadRequest field path)."""

    def __init__(self, code: grpc.StatusCode, reason: Reason, message: str, *, field: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        self.code = code
        self.reason = reason
        self.field = field
        self.why = message
        self.message = f"{field}: {message}" if field else message
        self.metadata = dict(metadata or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.reason.value}, {self.message!r})"

    def status(self) -> status_pb2.Status:
        """As a google.rpc.Status: code, message, ErrorInfo and (with a field) BadRequest."""
        info = error_details_pb2.ErrorInfo(reason=self.reason.value, domain=DOMAIN, metadata=self.metadata)
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        status.details.add().Pack(info)
        if self.field and self.code not in _TRANSIENT:
            bad = error_details_pb2.BadRequest()
            bad.field_violations.add(field=self.field, description=self.why, reason=self.reason.value)
            status.details.add().Pack(bad)
        return status

    def abort(self, context) -> None:
        """End the RPC with this error (gRPC's `context.abort_with_status`; raises)."""
        from grpc_status import rpc_status

        context.abort_with_status(rpc_status.to_status(self.status()))


class ItemError(ServingError):
    """The failure of one item of a call that sent several (DetectBatch), at `index`: raised by the
    batcher for a request's own failure (its image, its category, its deadline). `cause` is the
    item's error as a lone Detect would get it."""

    def __init__(self, index: int, cause: ServingError) -> None:
        super().__init__(cause.code, cause.reason, cause.why, field=cause.field,
                         metadata={**cause.metadata, "index": str(index)})
        self.index = index
        self.cause = cause

    def for_batch(self) -> ServingError:
        """The client's error: the item named in the field path and message, e.g.
        "requests[1].image.encoded: ...", and in ErrorInfo's metadata."""
        cause = self.cause
        field = f"requests[{self.index}]" + (f".{cause.field}" if cause.field else "")
        return ServingError(cause.code, cause.reason, cause.why, field=field,
                            metadata={**cause.metadata, "index": str(self.index)})


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a google.rpc.Status (its reason, and metadata such as a batch "index")."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def renumber(status: status_pb2.Status, index: int, old: int | None) -> status_pb2.Status:
    """A DetectBatch item's error from a sub-batch (serve-ray splits a batch by category) as item `index`
    of the client's batch: `old` is its index in the sub-batch, None for an error about the whole
    sub-batch (its category), which is given to the sub-batch's first item."""
    prefix = f"requests[{index}]"
    out = status_pb2.Status(code=status.code)
    named = False
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            info.metadata["index"] = str(index)
            out.details.add().Pack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                v.field = _renamed(v.field, prefix, old)
            named = True
            out.details.add().Pack(bad)
        else:
            out.details.append(detail)
    if old is not None:
        out.message = _renamed(status.message, prefix, old)
    else:  # a message that names a field starts with it (BadRequest then names it too)
        out.message = f"{prefix}{'.' if named else ': '}{status.message}"
    return out


def _renamed(path: str, prefix: str, old: int | None) -> str:
    if old is None:
        return f"{prefix}.{path}"
    was = f"requests[{old}]"
    return prefix + path[len(was):] if path.startswith(was) else path


def status_json(status: status_pb2.Status) -> dict:
    """An error's HTTP body: {"code": "INVALID_ARGUMENT", "message": ..., "details": [...]}, each detail
    in protobuf's JSON mapping (as Google's HTTP APIs and grpc-gateway write them)."""
    return {"code": code_pb2.Code.Name(status.code), "message": status.message,
            "details": [json_format.MessageToDict(d) for d in status.details]}


_ARTIFACT_REASONS = (  # most specific first: PickleFileError is a NotSafetensorsError
    (CoreMismatchError, Code.FAILED_PRECONDITION, Reason.ADAPTER_CORE_MISMATCH),
    (TooLargeError, Code.RESOURCE_EXHAUSTED, Reason.ADAPTER_TOO_LARGE),
    (NotSafetensorsError, Code.INVALID_ARGUMENT, Reason.ADAPTER_NOT_SAFETENSORS),
    (MetadataError, Code.INVALID_ARGUMENT, Reason.ADAPTER_METADATA_INVALID),
    (TensorMismatchError, Code.INVALID_ARGUMENT, Reason.ADAPTER_TENSORS_INVALID),
    (NonFiniteError, Code.INVALID_ARGUMENT, Reason.ADAPTER_NON_FINITE),
    (BatchNormError, Code.INVALID_ARGUMENT, Reason.ADAPTER_BATCHNORM_INVALID),
)


def from_artifact_error(exc: ArtifactError, field: str = "adapter") -> ServingError:
    """Adapter-file problems: wrong core -> FAILED_PRECONDITION, too large -> RESOURCE_EXHAUSTED,
    anything else about the file -> INVALID_ARGUMENT; each with its reason."""
    code, reason = next(((c, r) for kind, c, r in _ARTIFACT_REASONS if isinstance(exc, kind)),
                        (Code.INVALID_ARGUMENT, Reason.ADAPTER_INVALID))
    return ServingError(code, reason, str(exc), field=field)


def clip(value: object, limit: int = 80) -> str:
    """`landmarks.text.clip` at the server's length for a client's string in an error."""
    return text.clip(value, limit)


def from_os_error(exc: OSError, what: str) -> ServingError:
    """A disk problem while `what`: full -> RESOURCE_EXHAUSTED, anything else -> UNAVAILABLE; the
    message says nothing was stored (callers make sure of that)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ServingError(Code.RESOURCE_EXHAUSTED, Reason.STORE_FULL,
                            f"{what}: the adapter store's disk is full ({reason}); nothing was stored. "
                            "Free space (or unregister old versions) and retry")
    return ServingError(Code.UNAVAILABLE, Reason.STORE_UNAVAILABLE,
                        f"{what}: the adapter store could not be written ({reason}); nothing was stored. "
                        "Retry; if it persists the operator must check the store directory")


def grpc_handler(method):
    """A servicer method's boundary: its ServingError goes to the client as its status; anything else
    is a bug, logged with its traceback and answered INTERNAL (never for bad input)."""
    log = logging.getLogger(method.__module__)

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as exc:
            exc.abort(context)
        except Exception:
            log.exception("%s failed", method.__name__)
            ServingError(Code.INTERNAL, Reason.INTERNAL,
                         f"internal error in {method.__name__}; see the server log").abort(context)
    return wrapper
