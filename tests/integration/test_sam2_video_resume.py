"""A video job whose propagator replica is killed mid-video completes from its last finished range,
with the very masks of an uninterrupted run (DESIGN.md: state hand-off at range boundaries)."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import data_uri, lossless_video, moving_squares, queue_outcome

pytestmark = pytest.mark.integration

BODY_PROMPTS = {"prompts": [{"x": 10, "y": 15, "object_id": 1}],
                "box_prompts": [{"x_min": 38, "y_min": 25, "x_max": 62, "y_max": 46, "object_id": 2}],
                "return_masks_rle": True}


def kill_replica(deployment: str) -> None:
    """Kill the one replica of `deployment` for good, as a crashed process would be gone."""
    import ray
    from ray.util import list_named_actors

    names = [a for a in list_named_actors(all_namespaces=True) if deployment in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)


def ranges_done(logs: list[dict]) -> int:
    return sum(log["message"].startswith("range ") for log in logs)


def test_killed_propagator_resumes_from_the_last_finished_range(visus):
    video = data_uri(lossless_video(moving_squares(96, 64, 48)), "video/quicktime")
    body = {"video_url": video, **BODY_PROMPTS}
    with visus.client() as http:
        submitted = http.post("/queue/fal-ai/sam2/video", json=body).json()
        deadline = time.time() + 120
        while time.time() < deadline:
            status = http.get(submitted["status_url"], params={"logs": 1}).json()
            if ranges_done(status.get("logs") or []) >= 3:
                break
            assert status["status"] != "COMPLETED", "finished before the kill: make the video longer"
            time.sleep(0.05)
        kill_replica("fal_ai__sam2__video")

        status, response = queue_outcome(http, submitted)
        assert response.status_code == 200, response.text
        messages = [log["message"] for log in status["logs"]]
        assert any("dispatching it again" in m for m in messages), messages
        resumed = [m for m in messages if m.startswith("resuming from the checkpoint after range")]
        assert resumed, messages
        assert int(resumed[0].split("range ")[1].split("/")[0]) >= 3  # not from frame 0
        interrupted = json.loads(http.get(response.json()["masks_rle"]["url"]).content)

        # The same request without a kill: identical masks on every frame.
        again = http.post("/queue/fal-ai/sam2/video", json=body).json()
        _, clean = queue_outcome(http, again)
        assert clean.status_code == 200
        assert json.loads(http.get(clean.json()["masks_rle"]["url"]).content) == interrupted

        # The replica came back: the stack is ready for the tests after this one.
        deadline = time.time() + 120
        while http.get("/readyz").status_code != 200:
            assert time.time() < deadline, "the video deployment did not recover"
            time.sleep(0.5)
