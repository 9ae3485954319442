"""AdapterStore: the adapters directory, the registry's source of truth (a restart serves it again).
Its layout, and how it is read, is `landmarks.store_layout` (shared with `landmarks.Detector`); this
module adds writing (atomically) and sweeping what an interrupted write left.

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

from landmarks import store_layout
from landmarks.store_layout import SHIPPED, STATE_FILE, SUFFIX, parse_state

__all__ = ["STATE_FILE", "SUFFIX", "TEMP_RE", "AdapterStore", "parse_state"]

log = logging.getLogger(__name__)
TEMP_RE = re.compile(r"^\..+\.\d+\.\d+\.tmp$")  # what _atomic_write leaves if the process dies mid-write


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
        return store_layout.scan(self.dir, category)

    def _sweep_temp_files(self) -> None:
        """Remove temp files of writes a killed server never finished."""
        for folder in [self.dir, *(p for p in self.dir.iterdir() if p.is_dir())]:
            for tmp in folder.iterdir():
                if TEMP_RE.fullmatch(tmp.name) and tmp.is_file():
                    with suppress(OSError):
                        tmp.unlink()
                        log.warning("removed %s, left by an interrupted write", tmp)

    def read_state(self, category: str) -> dict:
        try:
            return store_layout.read_state(self.dir, category)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (the newest good version will be active): %s",
                        self.category_dir(category) / STATE_FILE, exc)
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
