"""Segmind credits: a detached actor that owns what each API key has spent, persisted in SQLite.

A call reserves its cost before it runs and is refunded if it fails, so only a 200 is billed and
two concurrent calls can never spend the same credit. Keys are stored as SHA-256 digests, never in
clear. What a key starts with comes from the config on every call, so raising a key's credits in
the config takes effect without touching the ledger.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

_SCHEMA = "CREATE TABLE IF NOT EXISTS spent (key_sha256 TEXT PRIMARY KEY, credits REAL NOT NULL)"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class CreditLedger:
    """Run as `ray.remote(CreditLedger).options(name=..., lifetime="detached", ...)`; see `get_credit_ledger`."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def _spent(self, digest: str) -> float:
        row = self._db.execute("SELECT credits FROM spent WHERE key_sha256 = ?", (digest,)).fetchone()
        return float(row[0]) if row else 0.0

    def _add(self, digest: str, credits: float) -> None:
        self._db.execute("INSERT INTO spent (key_sha256, credits) VALUES (?, ?) ON CONFLICT(key_sha256) "
                         "DO UPDATE SET credits = credits + excluded.credits", (digest, credits))

    def remaining(self, key: str, starting: float) -> float:
        return starting - self._spent(key_digest(key))

    def reserve(self, key: str, cost: float, starting: float) -> tuple[bool, float]:
        """(reserved, credits left): not reserved when fewer than `cost` credits are left."""
        digest = key_digest(key)
        left = starting - self._spent(digest)
        if left < cost:
            return False, left
        self._add(digest, cost)
        return True, left - cost

    def refund(self, key: str, cost: float, starting: float) -> float:
        digest = key_digest(key)
        self._add(digest, -cost)
        return starting - self._spent(digest)


def get_credit_ledger(config):
    import ray

    from serve.jobs.client import HEAD_NODE

    return (
        ray.remote(CreditLedger)
        .options(name="visus-segmind-credits", namespace=config.queue.namespace, lifetime="detached",
                 get_if_exists=True, max_restarts=-1, max_task_retries=-1, num_cpus=0,
                 resources=HEAD_NODE)  # its SQLite file lives on the head, like the job journal's
        .remote(str(config.home_path / "segmind_credits.sqlite"))
    )
