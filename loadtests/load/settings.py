"""Where the load goes and with which key, from the environment. Pure Python (no Locust import).

* host: ``LOADTEST_HOST``, else ``http://127.0.0.1:$VISUS_PORT`` (8000), the URL `make serve` prints;
* API key: ``VISUS_API_KEY``, else the first of ``VISUS_API_KEYS``, else the key `make serve` keeps
  in ``.visus/api_key`` (``$VISUS_HOME/api_key`` when that is set). It is sent as
  ``Authorization: Key <key>`` on fal routes and as ``x-api-key`` on Segmind's;
* ``LOADTEST_THINK_S`` (1.0): a user's mean pause between two tasks (uniform, 0.5x to 1.5x);
* ``LOADTEST_POLL_S`` (0.25): the queue users' status polling interval;
* ``LOADTEST_JOB_TIMEOUT_S`` (120): how long a queue job or a stream may take before it counts as failed.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def host() -> str:
    return (os.environ.get("LOADTEST_HOST") or f"http://127.0.0.1:{os.environ.get('VISUS_PORT', '8000')}").rstrip("/")


def key_file() -> Path:
    home = Path(os.environ.get("VISUS_HOME") or ".visus")
    return (home if home.is_absolute() else REPO / home) / "api_key"


def api_key() -> str:
    """The key to send; empty when none is configured (the server then answers 401, which fails the run)."""
    if os.environ.get("VISUS_API_KEY"):
        return os.environ["VISUS_API_KEY"].strip()
    if os.environ.get("VISUS_API_KEYS"):
        return os.environ["VISUS_API_KEYS"].split(",")[0].strip()
    try:
        return key_file().read_text().split(",")[0].strip()
    except OSError:
        return ""


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


THINK_S = _float("LOADTEST_THINK_S", 1.0)
POLL_S = _float("LOADTEST_POLL_S", 0.25)
JOB_TIMEOUT_S = _float("LOADTEST_JOB_TIMEOUT_S", 120.0)
