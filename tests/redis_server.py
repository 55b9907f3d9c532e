"""A throwaway redis-server for the Redis journal tests: loopback only, a password, no persistence.

Started once per test session by the `redis_server` fixture (tests/conftest.py). A missing
redis-server fails those tests (`make test` installs it as root) unless VISUS_SKIP_REDIS=1.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest


class RedisServer:
    def __init__(self, workdir: Path, port: int, appendonly: bool = False):
        exe = shutil.which("redis-server")
        if exe is None:
            message = ("redis-server is not installed: `make test` installs it as root (apt-get install "
                       "redis-server); set VISUS_SKIP_REDIS=1 to skip the Redis journal tests")
            if os.environ.get("VISUS_SKIP_REDIS") == "1":
                pytest.skip(message)
            pytest.fail(message)
        self.port = port
        self.password = secrets.token_hex(12)
        self.log = workdir / "redis.log"
        # appendonly: what the docs ask of a production Redis (appendfsync everysec is Redis's default).
        self._argv = [exe, "--bind", "127.0.0.1", "--port", str(port), "--requirepass", self.password,
                      "--save", "", "--appendonly", "yes" if appendonly else "no", "--dir", str(workdir),
                      "--daemonize", "no", "--logfile", str(self.log)]
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        self._wait_ready()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _wait_ready(self, timeout_s: float = 15.0) -> None:
        import redis

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log[-2000:]}")
            try:
                self.client().ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def url(self, db: int = 0, password: str | None = "default", query: str = "") -> str:
        """`password=None`: no password in the URL; "default": the server's."""
        secret = self.password if password == "default" else password
        auth = f":{secret}@" if secret is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def client(self, db: int = 0):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: waiting for startup polls quickly instead of backing off for a minute.
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           decode_responses=True, retry=Retry(NoBackoff(), 0))

    def flush(self) -> None:
        with self.client() as admin:
            admin.flushall()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
