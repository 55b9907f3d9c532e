"""Cancelling a running video job stops its propagator within one frame range."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest

from tests.conftest import VIDEO_CHUNK
from tests.helpers import data_uri, lossless_video, moving_squares

pytestmark = pytest.mark.integration

N = 96


def frames_checkpointed(path: Path) -> int:
    """Frames whose masks the propagator's last range checkpoint holds (0 before the first one)."""
    try:
        return len(msgpack.unpackb(path.read_bytes())["masks"]["frames"])
    except (FileNotFoundError, ValueError, KeyError, msgpack.UnpackException):
        return 0


def test_cancel_stops_the_propagator_within_one_range(visus):
    body = {"video_url": data_uri(lossless_video(moving_squares(N, 64, 48)), "video/quicktime"),
            "prompts": [{"x": 10, "y": 15}]}
    with visus.client() as http:
        submitted = http.post("/queue/fal-ai/sam2/video", json=body).json()
        checkpoint = Path(visus.config.resolved_storage_url) / "checkpoints" / submitted["request_id"] / \
            "sam2-video.msgpack"
        deadline = time.time() + 120
        while frames_checkpointed(checkpoint) < 2 * VIDEO_CHUNK:
            assert time.time() < deadline, "the job never got going"
            time.sleep(0.02)
        assert http.put(submitted["cancel_url"]).status_code == 202
        at_cancel = frames_checkpointed(checkpoint)

        while http.get(submitted["status_url"]).json()["status"] != "COMPLETED":
            assert time.time() < deadline
            time.sleep(0.02)
        result = http.get(submitted["response_url"])
        assert result.status_code == 499 and result.json()["error_type"] == "client_cancelled"
        time.sleep(3)  # far longer than a range takes: a propagator still running would have moved on
        stopped_at = frames_checkpointed(checkpoint)
        assert stopped_at <= at_cancel + VIDEO_CHUNK < N, (at_cancel, stopped_at)
