"""Cancelling a running video job stops its propagator within one frame range."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import VIDEO_CHUNK
from tests.helpers import data_uri, lossless_video, moving_squares, queue_outcome

pytestmark = pytest.mark.integration

N = 96


def frames_checkpointed(folder: Path) -> int:
    """Frames whose masks the propagator's finished ranges have checkpointed (0 before the first one)."""
    total = 0
    for path in folder.glob("range-*.json"):
        try:
            total += len(json.loads(path.read_text())["frames"])
        except (FileNotFoundError, ValueError, KeyError):
            pass  # a file being replaced right now
    return total


def test_cancel_stops_the_propagator_within_one_range(visus):
    body = {"video_url": data_uri(lossless_video(moving_squares(N, 64, 48)), "video/quicktime"),
            "prompts": [{"x": 10, "y": 15}]}
    with visus.client() as http:
        submitted = http.post("/queue/fal-ai/sam2/video", json=body).json()
        checkpoint = Path(visus.config.resolved_storage_url) / "checkpoints" / submitted["request_id"]
        deadline = time.time() + 120
        while frames_checkpointed(checkpoint) < 2 * VIDEO_CHUNK:
            assert time.time() < deadline, "the job never got going"
            time.sleep(0.02)
        assert http.put(submitted["cancel_url"]).status_code == 202
        at_cancel = frames_checkpointed(checkpoint)

        _, result = queue_outcome(http, submitted)
        assert result.status_code == 499 and result.json()["error_type"] == "client_cancelled"
        time.sleep(3)  # far longer than a range takes: a propagator still running would have moved on
        stopped_at = frames_checkpointed(checkpoint)
        assert stopped_at <= at_cancel + VIDEO_CHUNK < N, (at_cancel, stopped_at)
