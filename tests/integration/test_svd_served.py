"""`fal-ai/svd` on the session's stack with the tiny SVD checkpoint (64x64): video and seed, progress per
step in the status logs and SSE, cancel at the next step, the motion brush, bad input."""

from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from models.video_io import probe_video, read_frames
from tests.helpers import data_uri, png_bytes, queue_outcome

pytestmark = pytest.mark.integration

IMAGE = data_uri(png_bytes(80, 48), "image/png")


def body(**extra) -> dict:
    return {"image_url": IMAGE, "num_frames": 4, "steps": 2, **extra}


def video_frames(http, out: dict) -> np.ndarray:
    data = http.get(out["video"]["url"]).content
    info = probe_video(data)
    return read_frames(data, 0, info.num_frames)


def test_video_seed_and_reproducibility(visus):
    with visus.client() as http:
        first = http.post("/fal-ai/svd", json=body(seed=11, fps=5))
        assert first.status_code == 200, first.text
        out = first.json()
        assert out["seed"] == 11 and out["video"]["content_type"] == "video/mp4"
        info = probe_video(http.get(out["video"]["url"]).content)
        assert (info.num_frames, info.width, info.height, info.fps) == (4, 64, 64, 5)
        again = http.post("/fal-ai/svd", json=body(seed=11, fps=5)).json()
        # The generated frames are identical (tests/unit/test_svd.py checks them bit for bit); this libx264
        # does not always encode identical frames to identical bytes in a process that loaded torch, so the
        # decoded videos are compared with H.264's tolerance.
        same = np.abs(video_frames(http, out).astype(int) - video_frames(http, again).astype(int))
        other = http.post("/fal-ai/svd", json=body(seed=12, fps=5)).json()
        differs = np.abs(video_frames(http, out).astype(int) - video_frames(http, other).astype(int))
        assert same.mean() < 1.0 and differs.mean() > 3 * same.mean() + 1.0
        drawn = http.post("/fal-ai/svd", json=body()).json()
        assert isinstance(drawn["seed"], int) and drawn["seed"] >= 0


def test_progress_per_step_in_logs_and_status_stream(visus):
    with visus.client() as http:
        submitted = http.post("/queue/fal-ai/svd", json=body(steps=3)).json()
        with http.stream("GET", submitted["status_url"] + "/stream", params={"logs": "1"}) as response:
            events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
        status, result = queue_outcome(http, submitted)
    assert result.status_code == 200
    steps = [log["message"] for log in status["logs"] if log["message"].startswith("step ")]
    assert steps == ["step 1/3", "step 2/3", "step 3/3"]
    streamed = [log["message"] for e in events for log in (e.get("logs") or [])]
    assert [m for m in streamed if m.startswith("step ")] == steps


def test_cancel_takes_effect_at_the_next_step(visus):
    with visus.client() as http:
        submitted = http.post("/queue/fal-ai/svd", json=body(steps=100, num_frames=8)).json()
        deadline = time.time() + 120
        while time.time() < deadline:
            logs = http.get(submitted["status_url"], params={"logs": "1"}).json().get("logs") or []
            if any(log["message"].startswith("step ") for log in logs):
                break
            time.sleep(0.2)
        assert http.put(submitted["cancel_url"]).status_code == 202
        status, result = queue_outcome(http, submitted)
    assert result.status_code == 499 and status["error_type"] == "client_cancelled"
    steps = [log["message"] for log in status["logs"] if log["message"].startswith("step ")]
    assert len(steps) < 100


def test_motion_brush_with_a_mask_of_another_size(visus):
    mask = Image.new("L", (40, 24), 0)
    mask.paste(255, (0, 0, 20, 24))  # left half white: stays still
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    with visus.client() as http:
        r = http.post("/fal-ai/svd", json=body(seed=3, mask_image_url=data_uri(buf.getvalue(), "image/png")))
        assert r.status_code == 200, r.text
        frames = video_frames(http, r.json()).astype(int)
    left, right = np.abs(np.diff(frames[:, :, :24], axis=0)).mean(), np.abs(np.diff(frames[:, :, 40:], axis=0)).mean()
    assert left < right  # the still half moves less (the latents are exactly still; see tests/unit/test_svd.py)


def depth_zip(sizes: list[tuple[int, int]]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i, (w, h) in enumerate(sizes):
            frame = io.BytesIO()
            Image.linear_gradient("L").resize((w, h)).rotate(20 * i).save(frame, format="PNG")
            archive.writestr(f"depth/frame_{i}.png", frame.getvalue())  # frame_10 would sort after frame_9
    return data_uri(buf.getvalue(), "application/zip")


def test_depth_control_maps_set_the_frames(visus):
    with visus.client() as http:
        r = http.post("/fal-ai/svd", json={"image_url": IMAGE, "steps": 2, "seed": 1,
                                           "control_maps_data_url": depth_zip([(40, 24)] * 3)})
        assert r.status_code == 200, r.text
        assert probe_video(http.get(r.json()["video"]["url"]).content).num_frames == 3
        mixed = http.post("/fal-ai/svd", json=body(control_maps_data_url=depth_zip([(40, 24), (32, 32)]), num_frames=None))
        assert mixed.status_code == 422 and "same size" in str(mixed.json()["detail"])
        count = http.post("/fal-ai/svd", json=body(control_maps_data_url=depth_zip([(40, 24)] * 3)))
        assert count.status_code == 422 and "num_frames" in str(count.json()["detail"])


@pytest.mark.parametrize("extra, field", [
    ({"mask_image_url": "data:image/png;base64,AAAA"}, "mask_image_url"),
    ({"control_maps_data_url": "data:application/zip;base64,AAAA"}, "control_maps_data_url"),
    ({"num_frames": 26}, "num_frames"),
    ({"steps": 0}, "steps"),
    ({"motion_bucket_id": 256}, "motion_bucket_id"),
    ({"seed": -1}, "seed"),
    ({"image_url": "data:image/png;base64,AAAA"}, "image_url"),
])
def test_bad_input_names_the_field(visus, extra, field):
    with visus.client() as http:
        r = http.post("/fal-ai/svd", json=body(**extra))
    assert r.status_code == 422, r.text
    assert field in str(r.json()["detail"])
