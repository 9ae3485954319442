"""Reading a bearer token: shared by the client commands and the server (serving.auth checks them)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_token"]


def read_token(path: Path | str | None, env: str | None = None) -> str | None:
    """A token from a file (first line, stripped) or, failing that, an environment variable."""
    if path:
        token = Path(path).read_text().strip()
        if not token:
            raise ValueError(f"token file {path} is empty")
        return token
    if env and os.environ.get(env):
        return os.environ[env].strip()
    return None
