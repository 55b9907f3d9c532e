"""Killing the queue actor mid-load loses nothing: results stay readable, queued and running jobs run again."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler

import pytest
import ray

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


def test_killing_the_queue_actor_loses_nothing(visus):
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
