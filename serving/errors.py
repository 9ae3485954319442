"""One exception type that carries its gRPC status; the servicer aborts with it.

Everything below the servicer raises `ServingError(code, message)` for anything a client
did or asked; any other exception reaching the servicer is a bug and becomes INTERNAL.
"""

from __future__ import annotations

import errno

import grpc

from landmarks import text
from landmarks.adapter_io import ArtifactError, CoreMismatchError, TooLargeError

__all__ = ["ServingError", "clip", "from_artifact_error", "from_os_error"]

Code = grpc.StatusCode


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.item: int | None = None  # which request of a DetectBatch it is about (set by the batcher)

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def from_artifact_error(exc: ArtifactError, field: str = "adapter") -> ServingError:
    """Adapter-file problems: wrong core -> FAILED_PRECONDITION, too large -> RESOURCE_EXHAUSTED,
    anything else about the file -> INVALID_ARGUMENT."""
    if isinstance(exc, CoreMismatchError):
        code = Code.FAILED_PRECONDITION
    elif isinstance(exc, TooLargeError):
        code = Code.RESOURCE_EXHAUSTED
    else:
        code = Code.INVALID_ARGUMENT
    return ServingError(code, f"{field}: {exc}")


def clip(value: object, limit: int = 80) -> str:
    """`landmarks.text.clip` at the server's length for a client's string in an error."""
    return text.clip(value, limit)


def from_os_error(exc: OSError, what: str) -> ServingError:
    """A disk problem while `what`: full -> RESOURCE_EXHAUSTED, anything else -> UNAVAILABLE; the
    message says nothing was stored (callers make sure of that)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ServingError(Code.RESOURCE_EXHAUSTED,
                            f"{what}: the adapter store's disk is full ({reason}); nothing was stored. "
                            "Free space (or unregister old versions) and retry")
    return ServingError(Code.UNAVAILABLE, f"{what}: the adapter store could not be written ({reason}); "
                                          "nothing was stored. Retry; if it persists the operator must check "
                                          "the store directory")
