"""AdapterStore: the adapters directory, the registry's source of truth (a restart serves it again).

    <dir>/core.safetensors                     the frozen core (not an adapter)
    <dir>/<category>.safetensors               a shipped adapter, served as version "shipped"
    <dir>/<category>/<version>.safetensors     registered versions (written atomically)
    <dir>/<category>/_state.json               {"active": version, "shipped_removed": sha256|null}

Only files and bytes here: no validation of adapters (the registry does that) and no locking
(the registry serialises admin operations). Files are hand-editable, so everything read back is
checked (`parse_state`), and writes never leave a half-written file or a temp file behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from contextlib import suppress
from pathlib import Path

from serving.names import CATEGORY_RE, SHIPPED, VERSION_RE

__all__ = ["STATE_FILE", "SUFFIX", "TEMP_RE", "AdapterStore", "parse_state"]

log = logging.getLogger(__name__)
STATE_FILE = "_state.json"
SUFFIX = ".safetensors"
TEMP_RE = re.compile(r"^\..+\.\d+\.\d+\.tmp$")  # what _atomic_write leaves if the process dies mid-write
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


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never part of one; on failure no temp file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


class AdapterStore:
    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    def category_dir(self, category: str) -> Path:
        return self.dir / category

    def version_path(self, category: str, version: str) -> Path:
        return self.category_dir(category) / f"{version}{SUFFIX}"

    def scan(self, sweep: bool = True, category: str | None = None) -> dict[str, dict[str, Path]]:
        """{category: {version: file}} of everything on disk (start-up), after sweeping temp files.
        `sweep=False` for a reader that shares the store with a writer (its temp files are live);
        `category`: only that one's files (a few stat calls, whatever the store's size)."""
        if not self.dir.is_dir():
            if sweep:
                log.warning("adapters directory %s does not exist; starting with no categories", self.dir)
            return {}
        if sweep:
            self._sweep_temp_files()
        found: dict[str, dict[str, Path]] = {}
        flat = [self.dir / f"{category}{SUFFIX}"] if category else self.dir.glob(f"*{SUFFIX}")
        for path in sorted(p for p in flat if p.is_file()):
            name = path.name[: -len(SUFFIX)]
            if name != "core" and CATEGORY_RE.fullmatch(name):
                found.setdefault(name, {})[SHIPPED] = path
        subs = [self.dir / category] if category else self.dir.iterdir()
        for sub in sorted(p for p in subs if p.is_dir() and CATEGORY_RE.fullmatch(p.name)):
            for path in sorted(sub.glob(f"*{SUFFIX}")):
                version = path.name[: -len(SUFFIX)]
                if VERSION_RE.fullmatch(version) and version != SHIPPED:
                    found.setdefault(sub.name, {})[version] = path
        return found

    def _sweep_temp_files(self) -> None:
        """Remove temp files of writes a killed server never finished."""
        for folder in [self.dir, *(p for p in self.dir.iterdir() if p.is_dir())]:
            for tmp in folder.iterdir():
                if TEMP_RE.fullmatch(tmp.name) and tmp.is_file():
                    with suppress(OSError):
                        tmp.unlink()
                        log.warning("removed %s, left by an interrupted write", tmp)

    def read_state(self, category: str) -> dict:
        path = self.category_dir(category) / STATE_FILE
        try:
            return parse_state(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (the newest good version will be active): %s", path, exc)
            return {}

    def write_state(self, category: str, **changes: object) -> None:
        """Raises OSError (nothing changed on disk)."""
        state = {**self.read_state(category), **changes}
        _atomic_write(self.category_dir(category) / STATE_FILE, json.dumps(state, indent=1).encode())

    def write_version(self, category: str, version: str, data: bytes, activate: bool) -> Path:
        """The file, then (with `activate`) the state naming it active: both or neither. Raises OSError."""
        target = self.version_path(category, version)
        try:
            _atomic_write(target, data)
            if activate:
                self.write_state(category, active=version)
        except OSError:
            with suppress(OSError):
                target.unlink()
            raise
        return target

    def delete_version(self, category: str, version: str, path: Path | None) -> None:
        if version == SHIPPED or path is None:
            return  # a shipped file is never deleted (unregister remembers its content instead)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # already out of view; only a restart would serve it again
            log.error("could not delete %s (%s); remove it by hand or it is served again after a restart", path, exc)

    def remove_category(self, category: str) -> None:
        """The category's last version is gone: tidy its folder (keep what records a removed shipped file)."""
        path = self.category_dir(category)
        if self.read_state(category).get("shipped_removed"):
            with suppress(OSError):  # (only tidies: the active name is checked against what exists)
                self.write_state(category, active=None)
            return
        try:
            (path / STATE_FILE).unlink(missing_ok=True)
            path.rmdir()
        except OSError:
            pass  # something else lives there; harmless
