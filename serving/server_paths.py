"""Server-side paths a client may name (RegisterAdapter's `path`, an adaptation job's `path`): only
inside the directories the operator allowed with --allow-path, after resolving symbolic links and
'..', so that no request reads a file the operator did not offer."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import grpc

from serving.errors import Reason, ServingError, clip

__all__ = ["AllowedPaths"]

Code = grpc.StatusCode
MAX_PATH_CHARS = 4096


class AllowedPaths:
    """The --allow-path directories, resolved once; `resolve` checks a client's path against them."""

    def __init__(self, dirs: Iterable[Path | str]) -> None:
        self.roots = tuple(Path(os.path.realpath(p)) for p in dirs)

    def contains(self, real: Path) -> bool:
        """Whether an already resolved path lies in (or is) an allowed directory."""
        return any(real == root or root in real.parents for root in self.roots)

    def resolve(self, path: str, disabled: str) -> Path:
        """The real path of `path` if it is allowed; otherwise PERMISSION_DENIED (`disabled` says what to
        do instead when no directory is allowed at all) or INVALID_ARGUMENT for an unusable string."""
        if not self.roots:
            raise ServingError(Code.PERMISSION_DENIED, Reason.PATH_REGISTRATION_DISABLED, disabled, field="path")
        if "\x00" in path or len(path) > MAX_PATH_CHARS:
            raise ServingError(Code.INVALID_ARGUMENT, Reason.PATH_INVALID,
                               f"{clip(path)} is not a usable path (NUL byte, or over {MAX_PATH_CHARS} characters)",
                               field="path")
        try:
            real = Path(os.path.realpath(path))
        except (OSError, ValueError) as exc:
            raise ServingError(Code.INVALID_ARGUMENT, Reason.PATH_INVALID, f"cannot resolve {clip(path)}: {exc}",
                               field="path") from None
        if not self.contains(real):
            raise ServingError(Code.PERMISSION_DENIED, Reason.PATH_NOT_ALLOWED,
                               f"{clip(path)} is outside the directories this server allows "
                               f"({', '.join(map(str, self.roots))})", field="path")
        return real
