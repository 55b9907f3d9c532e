"""The job queue's write-through journal: one interface, a backend chosen by the journal URL.

Every state change of a job lands here before it is acknowledged, so a restarted queue actor rebuilds
itself from the journal: finished results stay readable, queued and interrupted jobs are dispatched
again, undelivered webhooks are retried.

- a plain path or `sqlite:///path` -> SQLite file (`journal_sqlite.py`), for one machine;
- `redis://` / `rediss://` -> Redis (`journal_redis.py`), for clusters where the queue actor may
  restart on another node.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from urllib.parse import urlsplit

from serve.jobs.records import JobRecord

REDIS_SCHEMES = ("redis", "rediss")


class JournalError(RuntimeError):
    """The journal cannot be opened or used (unreachable server, wrong password, bad URL)."""


class Journal(ABC):
    """What the queue actor needs of a journal. Calls are synchronous and each one is durable on return
    (as durable as the backend is configured to be)."""

    @abstractmethod
    def save(self, job: JobRecord) -> None:
        """Insert or replace the job's record (everything but its logs)."""

    @abstractmethod
    def append_log(self, request_id: str, n: int, entry: dict) -> None:
        """Store log entry number `n` of the job; storing the same `n` again replaces it."""

    @abstractmethod
    def load(self, request_id: str) -> JobRecord | None:
        """The job with its logs in order, or None."""

    @abstractmethod
    def unfinished(self) -> list[JobRecord]:
        """Jobs not COMPLETED, in submission (seq) order."""

    @abstractmethod
    def pending_webhooks(self) -> list[JobRecord]:
        """COMPLETED jobs whose webhook is still pending, in seq order."""

    @abstractmethod
    def max_seq(self) -> int:
        """The highest seq saved so far (0 when empty)."""

    @abstractmethod
    def close(self) -> None: ...


def journal_scheme(url: str) -> str:
    """'sqlite' or 'redis' for a journal URL; ValueError for anything else."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("", "sqlite"):
        return "sqlite"
    if scheme in REDIS_SCHEMES:
        return "redis"
    raise ValueError(f"unsupported journal URL scheme {scheme!r}: "
                     "use a file path, sqlite:///path, redis:// or rediss://")


def sqlite_path(url: str) -> str:
    # SQLAlchemy's convention: sqlite:///rel/path is relative, sqlite:////abs/path absolute.
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url


def open_journal(url: str, app_name: str = "visus") -> Journal:
    """The journal at `url`. Redis keys are prefixed per app (see journal_redis) so apps can share a db."""
    if journal_scheme(url) == "redis":
        from serve.jobs.journal_redis import RedisJournal

        return RedisJournal(url, app_name)
    from serve.jobs.journal_sqlite import SqliteJournal

    return SqliteJournal(sqlite_path(url))


def record_fields(job: JobRecord) -> dict:
    """The record as plain data, without its logs (which are stored entry by entry)."""
    data = dataclasses.asdict(job)
    data.pop("logs")
    return data
