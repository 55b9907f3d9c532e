"""The job journal in a SQLite file (WAL): the default, for a queue actor that always runs on one machine."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from serve.jobs.journal import Journal, JournalError
from serve.jobs.records import JobRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    request_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    endpoint_id TEXT NOT NULL,
    queue_base TEXT NOT NULL,
    deployment TEXT NOT NULL,
    payload TEXT NOT NULL,
    base_url TEXT NOT NULL,
    webhook_url TEXT,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    start_deadline REAL,
    result_status INTEGER,
    result_body TEXT,
    result_headers TEXT,
    webhook_state TEXT,
    dispatch_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS logs (
    request_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (request_id, n)
);
"""

_COLUMNS = ("request_id", "seq", "endpoint_id", "queue_base", "deployment", "payload", "base_url",
            "webhook_url", "status", "created_at", "started_at", "completed_at", "start_deadline",
            "result_status", "result_body", "result_headers", "webhook_state", "dispatch_count")
_SELECT = f"SELECT {','.join(_COLUMNS)} FROM jobs"


class SqliteJournal(Journal):
    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (what actor restarts are); only power loss can drop the tail.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the SQLite job journal {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def max_seq(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        return int(row[0])

    def save(self, job: JobRecord) -> None:
        values = (job.request_id, job.seq, job.endpoint_id, job.queue_base, job.deployment,
                  json.dumps(job.payload), job.base_url, job.webhook_url, job.status, job.created_at,
                  job.started_at, job.completed_at, job.start_deadline, job.result_status,
                  None if job.result_body is None else json.dumps(job.result_body),
                  json.dumps(job.result_headers), job.webhook_state, job.dispatch_count)
        placeholders = ",".join("?" * len(_COLUMNS))
        self._db.execute(f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders})", values)

    def append_log(self, request_id: str, n: int, entry: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO logs VALUES (?,?,?)", (request_id, n, json.dumps(entry)))

    def _record(self, row: tuple) -> JobRecord:
        data = dict(zip(_COLUMNS, row))
        data["payload"] = json.loads(data["payload"])
        data["result_body"] = None if data["result_body"] is None else json.loads(data["result_body"])
        data["result_headers"] = json.loads(data["result_headers"] or "{}")
        job = JobRecord(**data)
        job.logs = [json.loads(e) for (e,) in self._db.execute(
            "SELECT entry FROM logs WHERE request_id=? ORDER BY n", (job.request_id,))]
        return job

    def load(self, request_id: str) -> JobRecord | None:
        row = self._db.execute(f"{_SELECT} WHERE request_id=?", (request_id,)).fetchone()
        return self._record(row) if row else None

    def unfinished(self) -> list[JobRecord]:
        rows = self._db.execute(f"{_SELECT} WHERE status != 'COMPLETED' ORDER BY seq")
        return [self._record(r) for r in rows.fetchall()]

    def pending_webhooks(self) -> list[JobRecord]:
        rows = self._db.execute(f"{_SELECT} WHERE status = 'COMPLETED' AND webhook_state = 'pending' ORDER BY seq")
        return [self._record(r) for r in rows.fetchall()]
