"""`fal-ai/sa2va/{8b,4b}/{image,video}` on the session's stack, with the tiny Sa2VA checkpoints.

The tiny checkpoints answer every question with one [SEG] (models/sa2va_tiny.py), so every path
from the language model to the mask files runs. Served answers and masks must be the ones the
model gives in this process for the same checkpoint and inputs: images exactly, mask videos
through H.264 (a lossy codec) nearly so. The video masks are tracked over several frame ranges,
encoded on the encoder worker for 8b and in the deployment itself for 4b.
"""

from __future__ import annotations

import functools
import io
import json
import time

import av
import numpy as np
import pytest
from PIL import Image

from deployments.sa2va_answer import clean_answer
from models.sa2va import Sa2VA
from tests.conftest import SA2VA_CHUNK
from tests.helpers import data_uri, lossless_video, moving_squares, png_bytes, queue_outcome

pytestmark = pytest.mark.integration

PROMPT = "Please segment the red square."
CHECKPOINTS = {"8b": "sa2va-tiny-internlm2", "4b": "sa2va-tiny-qwen2"}


@functools.cache
def local_model(visus_home: str, size: str) -> Sa2VA:
    from pathlib import Path

    return Sa2VA.from_pretrained(Path(visus_home) / "sa2va" / CHECKPOINTS[size])


def model_for(visus, size: str) -> Sa2VA:
    return local_model(str(visus.config.resolved_model_dir), size)


@pytest.fixture(scope="module")
def picture() -> bytes:
    return png_bytes(80, 56)


@pytest.fixture(scope="module")
def video() -> tuple[bytes, np.ndarray]:
    frames = moving_squares(8)
    return lossless_video(frames), frames


def fetch_png(http, url: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(http.get(url).content)))


def fetch_mp4(http, url: str) -> tuple[np.ndarray, float]:
    with av.open(io.BytesIO(http.get(url).content)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="gray") for f in container.decode(stream)])
        duration = float(stream.duration * stream.time_base) if stream.duration else float(container.duration / 1e6)
    return frames, duration


@pytest.mark.parametrize("size", ["8b", "4b"])
def test_image_answer_and_mask_are_the_models(visus, picture, size):
    model = model_for(visus, size)
    image = np.array(Image.open(io.BytesIO(picture)).convert("RGB"))
    expected = model.predict_forward(PROMPT, image=image)
    assert len(expected.masks) == 1 and expected.masks[0].any() and not expected.masks[0].all()
    with visus.client() as http:
        r = http.post(f"/fal-ai/sa2va/{size}/image", json={"prompt": PROMPT, "image_url": data_uri(picture, "image/png")})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["output"] == clean_answer(expected.prediction, model.stop_words) == "[SEG]"
        (mask,) = out["masks"]
        assert (mask["width"], mask["height"]) == (80, 56) and mask["content_type"] == "image/png"
        near_zero = np.abs(expected.logits[0][0].numpy()) < 1e-4  # threads may split sums differently
        assert ((fetch_png(http, mask["url"]) > 127) == expected.masks[0][0])[~near_zero].all()


def test_streaming_run_sends_the_answer_then_the_result(visus, picture):
    with visus.client() as http:
        body = {"prompt": PROMPT, "image_url": data_uri(picture, "image/png")}
        with http.stream("POST", "/fal-ai/sa2va/8b/image/stream", json=body) as r:
            assert r.status_code == 200
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    partial = [e["data"] for e in events if "data" in e]
    logs = [log["message"] for e in events for log in e.get("logs", [])]
    assert partial and partial[-1]["output"] == "[SEG]" and partial[0]["delta"]
    assert any("tokens/s" in message and "first token" in message for message in logs)
    assert events[-1]["output"] == "[SEG]" and len(events[-1]["masks"]) == 1


@pytest.mark.parametrize("size, sample", [("8b", None), ("4b", 5)])
def test_video_masks_are_tracked_over_ranges(visus, video, size, sample):
    data, frames = video
    model = model_for(visus, size)
    indices = list(range(len(frames))) if sample is None else [0, 2, 4, 5, 7]  # linspace(0, 7, 5) rounded
    sampled = [frames[i] for i in indices]
    expected = model.predict_forward(PROMPT, frames=sampled)
    (want,) = expected.masks
    with visus.client() as http:
        body = {"prompt": PROMPT, "video_url": data_uri(data, "video/quicktime")}
        if sample is not None:
            body["num_frames_to_sample"] = sample
        submitted = http.post(f"/queue/fal-ai/sa2va/{size}/video", json=body).json()
        status, result = queue_outcome(http, submitted)
        assert result.status_code == 200, result.text
        out = result.json()
        assert out["output"] == "[SEG]" and len(out["masks"]) == 1
        assert out["masks"][0]["content_type"] == "video/mp4"
        got, duration = fetch_mp4(http, out["masks"][0]["url"])
    messages = [log["message"] for log in status["logs"]]
    ranges = -(-len(indices) // SA2VA_CHUNK)
    assert any(f"range {ranges}/{ranges}" in m for m in messages), messages
    assert got.shape == (len(indices), 48, 64)
    assert duration == pytest.approx(len(frames) / 12, rel=0.05)  # the input's length, whatever the sampling
    agree = ((got > 127) == want).mean(axis=(1, 2))
    assert agree.min() > 0.97, agree  # H.264 softens the mask's edges a little


@pytest.mark.parametrize("path, body, field", [
    ("8b/image", {"prompt": "", "image_url": "IMG"}, "prompt"),
    ("8b/image", {"prompt": "   ", "image_url": "IMG"}, "prompt"),
    ("8b/image", {"prompt": "word " * 9000, "image_url": "IMG"}, "prompt"),  # over the tiny model's 8192 context
    ("4b/image", {"prompt": "hi", "image_url": "data:image/png;base64,AAAA"}, "image_url"),
    ("8b/video", {"prompt": "hi", "video_url": "data:video/mp4;base64,AAAA"}, "video_url"),
    ("8b/video", {"prompt": "hi", "video_url": "VID", "num_frames_to_sample": 0}, "num_frames_to_sample"),
    ("8b/video", {"prompt": "hi", "video_url": "VID", "num_frames_to_sample": 101}, "num_frames_to_sample"),
])
def test_bad_input_is_a_4xx_naming_the_field(visus, picture, video, path, body, field):
    body = {k: (data_uri(picture, "image/png") if v == "IMG" else data_uri(video[0], "video/quicktime") if v == "VID"
                else v) for k, v in body.items()}
    with visus.client() as http:
        r = http.post(f"/fal-ai/sa2va/{path}", json=body)
        assert r.status_code == 422, r.text
        assert any(field in detail.get("loc", []) for detail in r.json()["detail"]), r.text
        # The replica keeps serving.
        ok = http.post("/fal-ai/sa2va/8b/image", json={"prompt": PROMPT, "image_url": data_uri(picture, "image/png")})
        assert ok.status_code == 200


def test_killed_video_replica_resumes_from_the_last_finished_range(visus):
    """As for fal-ai/sam2/video: the re-dispatched job resumes with the answer, the [SEG] prompts and
    SAM 2's state from storage, and its mask video equals an uninterrupted run's."""
    from tests.integration.test_sam2_video_resume import kill_replica, ranges_done

    body = {"prompt": PROMPT, "video_url": data_uri(lossless_video(moving_squares(18)), "video/quicktime")}
    with visus.client() as http:
        submitted = http.post("/queue/fal-ai/sa2va/8b/video", json=body).json()
        deadline = time.time() + 180
        while time.time() < deadline:
            status = http.get(submitted["status_url"], params={"logs": 1}).json()
            if ranges_done(status.get("logs") or []) >= 2:
                break
            assert status["status"] != "COMPLETED", "finished before the kill: make the video longer"
            time.sleep(0.05)
        kill_replica("fal_ai__sa2va__8b__video")

        status, response = queue_outcome(http, submitted)
        assert response.status_code == 200, response.text
        messages = [log["message"] for log in status["logs"]]
        resumed = [m for m in messages if m.startswith("resuming from the checkpoint after range")]
        assert resumed and int(resumed[0].split("range ")[1].split("/")[0]) >= 2, messages
        assert response.json()["output"] == "[SEG]"
        interrupted, _ = fetch_mp4(http, response.json()["masks"][0]["url"])

        again = http.post("/queue/fal-ai/sa2va/8b/video", json=body).json()
        _, clean = queue_outcome(http, again)
        assert clean.status_code == 200
        uninterrupted, _ = fetch_mp4(http, clean.json()["masks"][0]["url"])
    assert interrupted.shape == uninterrupted.shape == (18, 48, 64)
    assert np.array_equal(interrupted > 127, uninterrupted > 127)
