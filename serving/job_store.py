"""JobStore: the adaptation jobs' records, in SQLite in the adapter store (ADAPTERS/.jobs/jobs.sqlite3).

A record is what a client reads back (`Job.to_json`): id, category, state, step of steps, the
validation and calibration reports, the registered version and the error. It survives a restart;
the files a job works on live beside it in ADAPTERS/.jobs/<id>/ (serving.adaptations). The folder's
name is not a valid category, so the adapter store never reads it as one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "Job", "JobStore"]

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
_JSON_FIELDS = ("options", "validation", "calibration", "upload")


@dataclass
class Job:
    id: str
    category: str
    state: str = QUEUED
    step: int = 0
    steps: int = 0
    phase: str = ""  # while running: training, calibrating, registering
    options: dict = field(default_factory=dict)  # preset, steps, num_landmarks, names, image_size, activate
    validation: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    upload: dict = field(default_factory=dict)  # images kept, and those skipped by why
    version: str = ""
    activated: bool = False
    error: str = ""
    created: float = 0.0
    updated: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> dict:
        return {"id": self.id, "category": self.category, "state": self.state, "step": self.step,
                "steps": self.steps, "phase": self.phase, "validation": self.validation,
                "calibration": self.calibration, "upload": self.upload, "version": self.version,
                "activated": self.activated, "error": self.error, "options": self.options,
                "created": self.created, "updated": self.updated}


_COLUMNS = [f.name for f in fields(Job)]


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(c + (' PRIMARY KEY' if c == 'id' else '') for c in _COLUMNS)})")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _row(values: tuple) -> Job:
        data = dict(zip(_COLUMNS, values))
        for name in _JSON_FIELDS:
            data[name] = json.loads(data[name] or "{}")
        data["activated"] = bool(data["activated"])
        return Job(**data)

    def add(self, job: Job) -> Job:
        job.created = job.updated = time.time()
        values = asdict(job)
        for name in _JSON_FIELDS:
            values[name] = json.dumps(values[name])
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                             [values[c] for c in _COLUMNS])
        return job

    def update(self, job_id: str, **changes: object) -> None:
        changes["updated"] = time.time()
        values = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in changes.items()]
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                             [*values, job_id])

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def list(self, states: tuple[str, ...] | None = None) -> list[Job]:
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
        args: tuple = ()
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
            args = states
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created, id", args).fetchall()
        return [self._row(r) for r in rows]
