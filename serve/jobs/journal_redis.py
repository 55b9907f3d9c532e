"""The job journal in Redis: for clusters, where a restarted queue actor may come back on another node.

Keys, all under one prefix per app (default `visus:<app_name>:`, or `?prefix=...` in the URL):
  job:<id>    the record as a JSON string (without logs)
  log:<id>    hash: entry index n -> log entry JSON
  seq         sorted set of every job id by seq (ordering and max_seq)
  unfinished  sorted set by seq of jobs not COMPLETED
  webhooks    sorted set by seq of COMPLETED jobs whose webhook is pending
`save` updates the record and the indices in one MULTI/EXEC, so they never disagree.

The password comes from the URL (`redis://:secret@host:6379/0`) or else from env VISUS_REDIS_PASSWORD
(mounted from a Kubernetes Secret). Durability is Redis's: run it with `appendonly yes` and
`appendfsync everysec` so a Redis restart loses at most about a second of state changes.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from serve.jobs.journal import Journal, JournalError, record_fields
from serve.jobs.records import JobRecord

PASSWORD_ENV = "VISUS_REDIS_PASSWORD"
logger = logging.getLogger("visus.journal")


def _split_prefix(url: str) -> tuple[str, str | None]:
    """The URL without our own `prefix` query parameter (redis-py would reject it), and that prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), None)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisJournal(Journal):
    def __init__(self, url: str, app_name: str = "visus"):
        target, prefix = _split_prefix(url)
        self.prefix = prefix if prefix is not None else f"visus:{app_name}:"
        self.where = redacted(target)
        extra = {}
        if urlsplit(target).password is None and os.environ.get(PASSWORD_ENV):
            extra["password"] = os.environ[PASSWORD_ENV]
        try:
            # redis-py reconnects and retries ConnectionError/TimeoutError (and LOADING while a restarted
            # Redis replays its AOF) with backoff; every write below is idempotent, so a retried one is harmless.
            self._r = redis.Redis.from_url(target, decode_responses=True, **extra)
            self._r.ping()
        except AuthenticationError as exc:
            raise JournalError(
                f"Redis job journal at {self.where}: authentication failed ({exc}); give the password in the "
                f"URL (redis://:PASSWORD@host:port/db) or in env {PASSWORD_ENV}") from exc
        except (RedisError, ValueError) as exc:
            raise JournalError(f"cannot open the Redis job journal at {self.where}: {exc}") from exc
        self._warn_if_volatile()

    def _warn_if_volatile(self) -> None:
        try:
            appendonly = self._r.config_get("appendonly").get("appendonly")
        except ResponseError:  # managed Redis often forbids CONFIG; its persistence is the provider's
            return
        if appendonly == "no":
            logger.warning("Redis at %s runs with appendonly=no: a Redis restart can lose queued jobs "
                           "(set appendonly yes, appendfsync everysec)", self.where)

    def _key(self, kind: str, request_id: str | None = None) -> str:
        return f"{self.prefix}{kind}" if request_id is None else f"{self.prefix}{kind}:{request_id}"

    def close(self) -> None:
        self._r.close()

    def max_seq(self) -> int:
        top = self._r.zrevrange(self._key("seq"), 0, 0, withscores=True)
        return int(top[0][1]) if top else 0

    def save(self, job: JobRecord) -> None:
        rid, seq = job.request_id, {job.request_id: job.seq}
        with self._r.pipeline(transaction=True) as tx:
            tx.set(self._key("job", rid), json.dumps(record_fields(job)))
            tx.zadd(self._key("seq"), seq)
            if job.status != "COMPLETED":
                tx.zadd(self._key("unfinished"), seq)
            else:
                tx.zrem(self._key("unfinished"), rid)
            if job.status == "COMPLETED" and job.webhook_state == "pending":
                tx.zadd(self._key("webhooks"), seq)
            else:
                tx.zrem(self._key("webhooks"), rid)
            tx.execute()

    def append_log(self, request_id: str, n: int, entry: dict) -> None:
        # A hash keyed by index, not a list: writing entry n twice (a retried call) replaces it, as in SQLite.
        self._r.hset(self._key("log", request_id), str(n), json.dumps(entry))

    def _records(self, request_ids: list[str]) -> list[JobRecord]:
        if not request_ids:
            return []
        with self._r.pipeline(transaction=True) as tx:
            for rid in request_ids:
                tx.get(self._key("job", rid))
                tx.hgetall(self._key("log", rid))
            replies = tx.execute()
        jobs = []
        for raw, logs in zip(replies[::2], replies[1::2]):
            if raw is None:
                continue
            job = JobRecord(**json.loads(raw))
            job.logs = [json.loads(logs[n]) for n in sorted(logs, key=int)]
            jobs.append(job)
        return jobs

    def load(self, request_id: str) -> JobRecord | None:
        found = self._records([request_id])
        return found[0] if found else None

    def unfinished(self) -> list[JobRecord]:
        return self._records(self._r.zrange(self._key("unfinished"), 0, -1))

    def pending_webhooks(self) -> list[JobRecord]:
        return self._records(self._r.zrange(self._key("webhooks"), 0, -1))
