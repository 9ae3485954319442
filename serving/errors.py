"""One exception type that carries its gRPC status; the servicer aborts with it.

Everything below the servicer raises `ServingError(code, message)` for anything a client
did or asked; any other exception reaching the servicer is a bug and becomes INTERNAL.
"""

from __future__ import annotations

import grpc

from landmarks.adapter_io import ArtifactError, CoreMismatchError, TooLargeError

__all__ = ["ServingError", "from_artifact_error"]

Code = grpc.StatusCode


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

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
