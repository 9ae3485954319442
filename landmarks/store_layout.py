"""The adapters directory as `landmarks serve` keeps it, read-only: what `landmarks.Detector` and the
server's store (`serving.store.AdapterStore`, which also writes it) both read, so that the in-process
API picks the file the server would serve.

    <dir>/core.safetensors                     the frozen core (not an adapter)
    <dir>/<category>.safetensors               a shipped adapter, served as version "shipped"
    <dir>/<category>/<version>.safetensors     registered versions
    <dir>/<category>/_state.json               {"active": version, "shipped_removed": sha256|null}

Which version a category serves (`pick_active`): the state file's active version if it exists,
else the newest good one (by file time, then name); a shipped file whose adapter fingerprint is the
state's `shipped_removed` was unregistered and is not a version at all.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "CATEGORY_RE",
    "SHIPPED",
    "STATE_FILE",
    "SUFFIX",
    "VERSION_RE",
    "created",
    "newest_first",
    "parse_state",
    "pick_active",
    "read_state",
    "scan",
]

CATEGORY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHIPPED = "shipped"  # the version of an adapter file shipped flat in the store
STATE_FILE = "_state.json"
SUFFIX = ".safetensors"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def parse_state(data: bytes) -> dict:
    """A category's `_state.json` -> {"active": version | None, "shipped_removed": sha256 | None}.

    Raises ValueError for anything else (not UTF-8 JSON, not an object, wrong types, names that
    are not versions): a bad file must cost its category the choice of active version, never the
    server's start."""
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(state, dict):
        raise ValueError(f"must be a JSON object, got {type(state).__name__}")
    active = state.get("active")
    if active is not None and (not isinstance(active, str) or not VERSION_RE.fullmatch(active)):
        raise ValueError(f"'active' must be a version name or null, got {str(active)[:80]!r}")
    removed = state.get("shipped_removed")
    if removed is not None and (not isinstance(removed, str) or not _SHA256_RE.fullmatch(removed)):
        raise ValueError(f"'shipped_removed' must be a sha256 hex digest or null, got {str(removed)[:80]!r}")
    return {"active": active, "shipped_removed": removed}


def read_state(directory: Path, category: str) -> dict:
    """The category's parsed state; {} when it has none. Raises OSError / ValueError for an unreadable
    or malformed file (the server logs it and goes on as if there were none)."""
    try:
        return parse_state((directory / category / STATE_FILE).read_bytes())
    except FileNotFoundError:
        return {}


def scan(directory: Path, category: str | None = None) -> dict[str, dict[str, Path]]:
    """{category: {version: file}} of the adapter files in `directory` (only `category`'s: a few stat
    calls, whatever the store's size). Names that are not valid categories or versions are skipped."""
    found: dict[str, dict[str, Path]] = {}
    if not directory.is_dir():
        return found
    flat = [directory / f"{category}{SUFFIX}"] if category else directory.glob(f"*{SUFFIX}")
    for path in sorted(p for p in flat if p.is_file()):
        name = path.name[: -len(SUFFIX)]
        if name != "core" and CATEGORY_RE.fullmatch(name):
            found.setdefault(name, {})[SHIPPED] = path
    subs = [directory / category] if category else directory.iterdir()
    for sub in sorted(p for p in subs if p.is_dir() and CATEGORY_RE.fullmatch(p.name)):
        for path in sorted(sub.glob(f"*{SUFFIX}")):
            version = path.name[: -len(SUFFIX)]
            if VERSION_RE.fullmatch(version) and version != SHIPPED:
                found.setdefault(sub.name, {})[version] = path
    return found


def created(path: Path) -> str:
    """A stored version's creation time as the server reports it (the file's mtime, UTC, ISO 8601)."""
    return _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")


def pick_active(state: dict, created_at: Mapping[str, str], loads: Callable[[str], bool]) -> str | None:
    """The version a category serves, from its state, {version: created} and whether a version's file
    loads (asked newest first, only as far as needed): the state's active version if it is one of them
    (even one that fails to load: the category then reports that error), else the newest that loads;
    None if none does."""
    active = state.get("active")
    if active in created_at:
        return active
    return next((version for version in newest_first(created_at) if loads(version)), None)


def newest_first(created_at: Mapping[str, str]) -> list[str]:
    """Versions from the newest (file time, then name) to the oldest: the order `pick_active` tries."""
    return sorted(created_at, key=lambda v: (created_at[v], v), reverse=True)
