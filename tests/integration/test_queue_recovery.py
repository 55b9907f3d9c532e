"""Killing the queue actor mid-load loses nothing: results stay readable, queued and running jobs run again.

The same test runs on the SQLite journal (the session's stack as configured) and on the Redis journal
(the queue actor swapped for one journaling to a real redis-server, the gateway restarted to find it).
"""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
import ray

from serve.gateway.ingress import GATEWAY_NAME
from serve.jobs.client import get_queue_actor
from serve.jobs.journal import open_journal
from tests.conftest import ALLOWED_HOST
from tests.helpers import LoopbackServer, png_bytes, png_data_uri

pytestmark = pytest.mark.integration


class _SlowImage(BaseHTTPRequestHandler):
    """Holds each image for a moment so that jobs are still running when the actor dies."""

    def do_GET(self):
        time.sleep(1.0)
        body = png_bytes(40, 40)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def kill_the_queue_actor_mid_load(visus) -> list[str]:
    """The test body, whatever the journal: returns the ids of every job it submitted."""
    config = visus.config
    with LoopbackServer(_SlowImage, host=ALLOWED_HOST) as slow, visus.client() as http:
        fast = [http.post("/queue/fal-ai/sam2/image",
                          json={"image_url": png_data_uri(32, 32), "prompts": [{"x": 3, "y": 3}]}).json()
                for _ in range(3)]
        for job in fast:
            while http.get(job["status_url"]).json()["status"] != "COMPLETED":
                time.sleep(0.05)
        finished = {job["request_id"]: http.get(job["response_url"]).json() for job in fast}

        slow_jobs = [http.post("/queue/fal-ai/sam2/image",
                               json={"image_url": f"{slow.url}/img-{i}.png", "prompts": [{"x": 3, "y": 3}]}).json()
                     for i in range(12)]
        time.sleep(0.5)  # some jobs are now running, the rest are queued
        actor = ray.get_actor(config.queue.actor_name, namespace=config.queue.namespace)
        ray.kill(actor, no_restart=False)

        # Submitting during the restart works too (the gateway's calls are retried).
        late = http.post("/queue/fal-ai/sam2/image",
                         json={"image_url": png_data_uri(32, 32), "prompts": [{"x": 3, "y": 3}]})
        assert late.status_code == 200
        late = late.json()

        for rid, body in finished.items():
            again = http.get(f"/queue/fal-ai/sam2/requests/{rid}")
            assert again.status_code == 200 and again.json() == body

        deadline = time.time() + 120
        pending = {job["request_id"]: job for job in slow_jobs + [late]}
        while pending and time.time() < deadline:
            for rid, job in list(pending.items()):
                status = http.get(job["status_url"]).json()
                if status["status"] == "COMPLETED":
                    assert "error" not in status, status
                    result = http.get(job["response_url"])
                    assert result.status_code == 200 and result.json()["image"]["width"] in (32, 40)
                    del pending[rid]
            time.sleep(0.2)
        assert not pending, f"{len(pending)} jobs never completed after the restart"
        stats = http.get("/readyz").json()["queue"]
        assert stats["redispatched"] >= 1
    return [*finished, *(job["request_id"] for job in slow_jobs), late["request_id"]]


def test_killing_the_queue_actor_loses_nothing(visus):
    kill_the_queue_actor_mid_load(visus)


def _wait(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def _gateway_replicas(app_name: str) -> list[dict]:
    from ray.util import list_named_actors

    return [a for a in list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app_name}#{GATEWAY_NAME}#")]


def _ready(visus) -> bool:
    try:
        return httpx.get(f"{visus.url}/readyz", headers=visus.headers, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _replace_queue_actor(visus, config) -> None:
    """A new queue actor built from `config` under the same name; the gateway replica is killed so that
    Serve starts one that looks the actor up again (the old replica holds a handle to the dead one)."""
    name, namespace = config.queue.actor_name, config.queue.namespace
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)

    def name_free() -> bool:
        try:
            ray.get_actor(name, namespace=namespace)
            return False
        except ValueError:
            return True

    _wait(name_free, "the old queue actor's name is free")
    ray.get(get_queue_actor(config).ready.remote(), timeout=60)
    old = {a["name"] for a in _gateway_replicas(config.app_name)}
    for replica in _gateway_replicas(config.app_name):
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    _wait(lambda: {a["name"] for a in _gateway_replicas(config.app_name)} - old, "a new gateway replica runs")
    _wait(lambda: _ready(visus), "the new gateway answers /readyz")


@pytest.fixture
def redis_journal(visus, redis_server):
    """The stack's queue actor journaling to Redis for one test; the SQLite one is back afterwards."""
    redis_server.flush()
    url = redis_server.url(db=1)
    _replace_queue_actor(visus, visus.config.model_copy(update={"journal_url": url}))
    try:
        yield url
    finally:
        _replace_queue_actor(visus, visus.config)


def test_killing_the_queue_actor_loses_nothing_on_the_redis_journal(visus, redis_journal):
    request_ids = kill_the_queue_actor_mid_load(visus)
    journal = open_journal(redis_journal, visus.config.app_name)
    try:
        records = [journal.load(rid) for rid in request_ids]
    finally:
        journal.close()
    assert all(r is not None and r.status == "COMPLETED" and r.result_status == 200 for r in records)
