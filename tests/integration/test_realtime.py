"""Realtime websockets (`/{endpoint_id}/realtime`) with the official `fal-client` and a raw websocket.

fal's protocol: msgpack binary frames both ways, `x-fal-error` text frames for errors, close 1000 at
a clean end, and a newest-input-wins buffer of `max_buffering` inputs.
"""

from __future__ import annotations

import json
import time

import fal_client
import fal_client.client as fc
import msgpack
import pytest
from websockets.sync.client import connect

from tests.helpers import lossless_video, moving_squares, png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(visus):
    saved = fc.REALTIME_URL_FORMAT, fc.REST_URL
    fc.REALTIME_URL_FORMAT = f"ws://{visus.url.split('://', 1)[1]}/"
    fc.REST_URL = f"{visus.url}/rest"
    yield fal_client.SyncClient(key=visus.key)
    fc.REALTIME_URL_FORMAT, fc.REST_URL = saved


def image_input(width: int = 64, height: int = 64) -> dict:
    # Raw bytes in a URL field: msgpack carries them as they are, no data URI needed.
    return {"image_url": png_bytes(width, height), "prompts": [{"x": 20, "y": 30, "label": 1}], "sync_mode": True}


def test_image_results_come_back_as_msgpack_and_errors_keep_the_session(client):
    with client.realtime("fal-ai/sam2/image") as conn:
        conn.send(image_input(80, 60))
        result = conn.recv()
        assert (result["image"]["width"], result["image"]["height"]) == (80, 60)
        assert result["image"]["url"].startswith("data:image/png;base64,")

        conn.send({"image_url": png_bytes(), "prompts": [{"x": 20, "y": 30, "label": 7}]})
        with pytest.raises(fc.RealtimeError) as bad:
            conn.recv()
        assert bad.value.error == "BAD_REQUEST" and "prompts.0.label" in bad.value.reason

        conn.send({"image_url": png_bytes(), "prompts": [{"x": 500, "y": 30, "label": 1}]})
        with pytest.raises(fc.RealtimeError) as outside:
            conn.recv()
        assert outside.value.error == "BAD_REQUEST" and "prompts" in outside.value.reason

        conn.send(image_input(64, 48))  # the session goes on after bad inputs
        assert conn.recv()["image"]["height"] == 48


def test_key_header_instead_of_a_token(client):
    with client.realtime("fal-ai/sam2/image", use_jwt=False) as conn:
        conn.send(image_input())
        assert conn.recv()["image"]["width"] == 64


def test_newest_input_wins_when_the_buffer_is_full(client):
    """A slow input, then a burst: with max_buffering=1 only the newest of the burst is run after it."""
    widths = [96, 97, 98, 99, 100, 101]
    with client.realtime("fal-ai/sam2/image", max_buffering=1) as conn:
        conn.send(image_input(1600, 1200))  # keeps the model busy while the burst arrives
        for width in widths:
            conn.send(image_input(width, 64))
        seen = []
        while not seen or seen[-1] != widths[-1]:
            seen.append(conn.recv()["image"]["width"])
    order = [1600, *widths]
    assert len(seen) < len(order), f"nothing was dropped: {seen}"
    positions = [order.index(w) for w in seen]
    assert positions == sorted(set(positions)), f"results must come once each, in input order: {seen}"


def test_video_session(client):
    video = lossless_video(moving_squares(6, 64, 48))
    with client.realtime("fal-ai/sam2/video") as conn:
        conn.send({"video_url": video, "box_prompts": [{"x_min": 2, "y_min": 6, "x_max": 20, "y_max": 26}],
                   "return_masks_rle": True})
        result = conn.recv()
    assert result["video"]["content_type"] == "video/mp4" and result["masks_rle"]["url"]


def test_idle_session_times_out_and_closes_cleanly(client, visus):
    assert visus.config.realtime.idle_timeout_s <= 5
    with client.realtime("fal-ai/sam2/image") as conn:
        with pytest.raises(fc.RealtimeError) as idle:
            conn.recv()
        assert idle.value.error == "TIMEOUT"
        assert conn.recv() is None  # close code 1000: a normal end for both clients


def ws_url(visus, path: str) -> str:
    return f"ws://{visus.url.split('://', 1)[1]}{path}"


def refusal(url: str, **kw) -> tuple[dict, int]:
    with connect(url, **kw) as ws:
        message = json.loads(ws.recv(timeout=10))
        with pytest.raises(Exception):
            ws.recv(timeout=10)
        return message, ws.close_code


@pytest.mark.parametrize("case", ["no credentials", "bad token", "token for another app", "wrong key"])
def test_unauthorized_sessions_get_an_error_and_a_policy_close(visus, case):
    import httpx

    token = None
    if case == "token for another app":
        token = httpx.post(f"{visus.url}/rest/tokens/", headers=visus.headers,
                           json={"allowed_apps": ["evf-sam"]}).json()
    elif case == "bad token":
        token = "not-a-token"
    query = f"?fal_jwt_token={token}" if token else ""
    headers = {"Authorization": "Key nope:nope"} if case == "wrong key" else None
    message, code = refusal(ws_url(visus, f"/fal-ai/sam2/image/realtime{query}"), additional_headers=headers)
    assert message["type"] == "x-fal-error" and message["error"] == "UNAUTHORIZED"
    assert code == 1008


def test_bad_buffering_unknown_endpoint_and_bad_frames(visus):
    auth = {"additional_headers": visus.headers}
    message, code = refusal(ws_url(visus, "/fal-ai/sam2/image/realtime?max_buffering=61"), **auth)
    assert (message["error"], code) == ("BAD_REQUEST", 1008) and "max_buffering" in message["reason"]
    message, code = refusal(ws_url(visus, "/fal-ai/nope/realtime"), **auth)
    assert (message["error"], code) == ("NOT_FOUND", 1008)

    with connect(ws_url(visus, "/fal-ai/sam2/image/realtime"), **auth) as ws:
        ws.send(b"\xc1")  # never valid msgpack
        assert json.loads(ws.recv(timeout=10))["reason"] == "binary frames must be msgpack"
        ws.send(msgpack.packb([1, 2]))
        assert "must be a map" in json.loads(ws.recv(timeout=10))["reason"]
        ws.send(json.dumps({"image_url": "data:image/png;base64,", "prompts": [{"x": 1, "y": 1, "label": 1}]}))
        error = json.loads(ws.recv(timeout=30))
        assert error["type"] == "x-fal-error" and error["error"] == "BAD_REQUEST" and "image_url" in error["reason"]
        started = time.time()
        ws.send(msgpack.packb(image_input(), use_bin_type=True))
        result = msgpack.unpackb(ws.recv(timeout=60))
        assert result["image"]["width"] == 64
        timing = json.loads(ws.recv(timeout=10))
        assert timing["type"] == "x-fal-message" and 0 < timing["timing"] <= time.time() - started + 1
