"""Locust load test for `fal-ai/sam2/image` over fal's wire protocol.

User classes (pick them with the web UI's `--class-picker`, or name them on the command line):

* ``SyncRunUser``     ``POST /fal-ai/sam2/image`` and wait for the answer (sync run).
* ``QueueFlowUser``   ``POST /queue/fal-ai/sam2/image`` -> poll ``GET <status_url>?logs=0`` every
                      ``VISUS_POLL_INTERVAL_S`` (50 ms) until COMPLETED -> ``GET <response_url>``; the
                      whole job is also reported as a synthetic ``JOB`` request, ``e2e sam2_image``.
* ``StatusPollUser``  hammers the status of one already completed request (polls per second the
                      gateway + queue actor can answer; no model work).

Examples (the server is a running Visus, e.g. `make serve`)::

    export VISUS_API_KEY=...            # sent as `Authorization: Key $VISUS_API_KEY`
    .venv/bin/locust -f loadtests/locustfile.py --headless -u 4 -r 4 --run-time 30s \
        --host http://127.0.0.1:8000 --stop-timeout 30 --csv /tmp/visus SyncRunUser
    .venv/bin/locust -f loadtests/locustfile.py --class-picker --host http://127.0.0.1:8000

Environment: ``VISUS_API_KEY``; ``VISUS_ENDPOINT`` (default fal-ai/sam2/image);
``VISUS_POLL_INTERVAL_S`` (0.05); ``VISUS_JOB_TIMEOUT_S`` (120, bounds each job's poll loop);
``VISUS_LOCUST_SAMPLES`` (a path: every request's exact start time and latency are written
there as JSON on exit, for percentiles finer than Locust's 10 ms buckets above 100 ms).

This file must never import ray (gevent's monkey-patching and ray crash together), nor anything
of Visus that does: the image is built here with PIL and numpy only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from gevent.lock import Semaphore
from locust import FastHttpUser, constant, events, task
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # Locust puts only this file's folder on the path
    sys.path.insert(0, str(REPO))

from loadtests.load.common import check_json as _check_json  # noqa: E402

API_KEY = os.environ.get("VISUS_API_KEY", "")
ENDPOINT = os.environ.get("VISUS_ENDPOINT", "fal-ai/sam2/image").strip("/")
POLL_INTERVAL_S = float(os.environ.get("VISUS_POLL_INTERVAL_S", "0.05"))
JOB_TIMEOUT_S = float(os.environ.get("VISUS_JOB_TIMEOUT_S", "120"))
SAMPLES_PATH = os.environ.get("VISUS_LOCUST_SAMPLES")

IMAGE_SIZE = 256
JOB_NAME = "e2e sam2_image"


def make_image_png(size: int = IMAGE_SIZE) -> bytes:
    """A deterministic photo-like test image: smooth gradients, one red square, mild sensor noise.

    About 110 KB as PNG at 256x256 (a real photo of that size is in the same range; pure noise
    would be twice as large and unrealistic).
    """
    yy, xx = np.mgrid[0:size, 0:size]
    scale = 256 / size
    img = np.stack([xx * scale, yy * scale, (xx + yy) * scale / 2], axis=-1)
    lo, hi = size // 4, 3 * size // 4
    img[lo:hi, lo:hi] = (220, 40, 40)
    noise = np.random.default_rng(0).integers(-6, 7, img.shape)
    pixels = np.clip(img + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


IMAGE_PNG = make_image_png()
IMAGE_DATA_URI = "data:image/png;base64," + base64.b64encode(IMAGE_PNG).decode()
PAYLOAD = {"image_url": IMAGE_DATA_URI, "prompts": [{"x": IMAGE_SIZE // 2, "y": IMAGE_SIZE // 2, "label": 1}]}
# Encoded once: the load generator shares the box with the server, so it should cost little.
PAYLOAD_BYTES = json.dumps(PAYLOAD).encode()
HEADERS = {"Authorization": f"Key {API_KEY}", "Content-Type": "application/json"}


class VisusUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    network_timeout = 180.0
    connection_timeout = 10.0
    default_headers = HEADERS




class SyncRunUser(VisusUser):
    """Sync run: one POST that returns the model output."""

    @task
    def sync_run(self):
        with self.client.post(f"/{ENDPOINT}", data=PAYLOAD_BYTES, name="sync run", catch_response=True) as r:
            _check_json(r, "image")


def _fire_job(start: float, exception: Exception | None) -> None:
    events.request.fire(request_type="JOB", name=JOB_NAME, response_time=(time.perf_counter() - start) * 1000,
                        response_length=0, exception=exception, context={})


class QueueFlowUser(VisusUser):
    """Queue flow: submit, poll the status URL until COMPLETED, fetch the result."""

    @task
    def job(self):
        start = time.perf_counter()
        with self.client.post(f"/queue/{ENDPOINT}", data=PAYLOAD_BYTES, name="submit", catch_response=True) as r:
            body = _check_json(r, "status_url", "response_url")
        if body is None:
            return _fire_job(start, RuntimeError("submit failed"))
        status_path = urlsplit(body["status_url"]).path + "?logs=0"
        result_path = urlsplit(body["response_url"]).path
        deadline = start + JOB_TIMEOUT_S
        while True:  # bounded by JOB_TIMEOUT_S
            with self.client.get(status_path, name="status", catch_response=True) as r:
                status = _check_json(r, "status")
            if status is None:
                return _fire_job(start, RuntimeError("status failed"))
            if status["status"] == "COMPLETED":
                break
            if time.perf_counter() > deadline:
                return _fire_job(start, TimeoutError(f"not COMPLETED after {JOB_TIMEOUT_S} s"))
            time.sleep(POLL_INTERVAL_S)  # gevent-patched: yields to the other users
        with self.client.get(result_path, name="result", catch_response=True) as r:
            result = _check_json(r, "image")
        _fire_job(start, None if result is not None else RuntimeError("result failed"))


class StatusPollUser(VisusUser):
    """Polls the status of one completed request as fast as it can (shared by all users of the class)."""

    _status_path: str | None = None
    _setup_lock = Semaphore()

    def on_start(self):
        with StatusPollUser._setup_lock:  # the first user submits the request; the others wait for it
            if StatusPollUser._status_path is None:
                StatusPollUser._status_path = self._completed_request()

    def _completed_request(self) -> str:
        r = self.client.post(f"/queue/{ENDPOINT}", data=PAYLOAD_BYTES, name="setup submit")
        r.raise_for_status()
        path = urlsplit(r.json()["status_url"]).path + "?logs=0"
        deadline = time.perf_counter() + JOB_TIMEOUT_S
        while time.perf_counter() < deadline:  # bounded
            status = self.client.get(path, name="setup status")
            if status.status_code == 200 and status.json().get("status") == "COMPLETED":
                return path
            time.sleep(POLL_INTERVAL_S)
        raise TimeoutError("the setup request did not complete")

    @task
    def poll(self):
        with self.client.get(StatusPollUser._status_path, name="status (completed)", catch_response=True) as r:
            body = _check_json(r, "status")
            if body is not None and body["status"] != "COMPLETED":
                r.failure(f"status {body['status']}, expected COMPLETED")


# ---- exact samples for the benchmark ----------------------------------------------------------
_samples: list[tuple[str, str, float, float, bool]] = []

if SAMPLES_PATH:
    @events.request.add_listener
    def _record(request_type, name, response_time, exception=None, **_):
        # (type, name, start epoch s, latency ms, ok); Locust's own stats round above 100 ms.
        _samples.append((request_type, name, time.time() - response_time / 1000, response_time, exception is None))

    @events.quitting.add_listener
    def _dump(environment, **_):
        tmp = SAMPLES_PATH + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"end": time.time(), "samples": _samples}, fh)
        os.replace(tmp, SAMPLES_PATH)
