"""`fal-ai/sam2/video` on the session's Ray Serve stack: two encoder replicas, 4-frame ranges.

The served, chunked pipeline must give the very masks the plain `sam2` video predictor gives in one
process on the same frames (the exactness of the logits themselves is checked in
tests/unit/test_sam2_video.py); the outputs are real files; bad input gets a 4xx naming the field.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from models.sam2_video import load_sam2_video_predictor
from models.video_io import probe_video, read_frames
from models.video_masks import decode_rle
from tests.conftest import VIDEO_CHUNK, VIDEO_ENCODERS
from tests.helpers import data_uri, lossless_video, moving_squares, png_data_uri, queue_outcome

pytestmark = pytest.mark.integration

N, W, H = 14, 64, 48
PROMPTS = [  # object 1 from a point on frame 2 (so frames 0-1 need the backward pass), refined on frame 9
    {"x": 12, "y": 15, "label": 1, "frame_index": 2, "object_id": 1},
    {"x": 30, "y": 16, "label": 1, "frame_index": 9, "object_id": 1},
    {"x": 5, "y": 5, "label": "0", "frame_index": 9, "object_id": 1},
]
BOXES = [{"x_min": 35, "y_min": 25, "x_max": 62, "y_max": 46, "frame_index": 2, "object_id": 2}]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The video as the server gets it, and a JPEG folder with exactly its pixels for the reference."""
    folder = tmp_path_factory.mktemp("frames")
    for i, frame in enumerate(moving_squares(N, W, H)):
        Image.fromarray(frame).save(folder / f"{i}.jpg", quality=95)
    pixels = np.stack([np.array(Image.open(folder / f"{i}.jpg").convert("RGB")) for i in range(N)])
    return lossless_video(pixels), folder


def reference_masks(checkpoint, folder) -> dict[int, dict[int, np.ndarray]]:
    predictor = load_sam2_video_predictor(checkpoint)
    final: dict[int, dict[int, np.ndarray]] = {}
    with torch.inference_mode():
        state = predictor.init_state(str(folder))
        for frame, obj in sorted({(p["frame_index"], p["object_id"]) for p in PROMPTS}):
            pts = [p for p in PROMPTS if (p["frame_index"], p["object_id"]) == (frame, obj)]
            predictor.add_new_points_or_box(state, frame, obj, points=[(p["x"], p["y"]) for p in pts],
                                            labels=[int(p["label"]) for p in pts])
        for b in BOXES:
            predictor.add_new_points_or_box(state, b["frame_index"], b["object_id"],
                                            box=(b["x_min"], b["y_min"], b["x_max"], b["y_max"]))
        for reverse in (False, True):
            for f, obj_ids, logits in predictor.propagate_in_video(state, reverse=reverse):
                final[f] = {o: (logits[i, 0] > 0).numpy() for i, o in enumerate(obj_ids)}
    return final


def test_chunked_over_encoder_replicas_equals_the_plain_predictor(visus, clip):
    from ray import serve

    video, folder = clip
    app = serve.status().applications[visus.config.app_name]
    states = app.deployments["sam2_video_encoder"].replica_states
    assert {str(getattr(k, "value", k)): v for k, v in states.items()}.get("RUNNING") == VIDEO_ENCODERS
    body = {"video_url": data_uri(video, "video/quicktime"), "prompts": PROMPTS, "box_prompts": BOXES,
            "return_masks_rle": True, "boundingbox_zip": True}
    with visus.client() as http:
        submitted = http.post("/queue/fal-ai/sam2/video", json=body).json()
        status, response = queue_outcome(http, submitted)
        assert response.status_code == 200, response.text
        out = response.json()
        ranges = [log["message"] for log in status["logs"] if log["message"].startswith("range ")]
        assert len(ranges) == len(range(0, N, VIDEO_CHUNK)) + 1  # 2 (prompt frame) is in two ranges: fwd, bwd
        assert any("backward" in line for line in ranges)
        assert any(f"{len(range(0, N, VIDEO_CHUNK))} ranges on the encoder workers" in log["message"]
                   for log in status["logs"])

        served = json.loads(http.get(out["masks_rle"]["url"]).content)
        video_file = http.get(out["video"]["url"])
        boxes_zip = http.get(out["boundingbox_frames_zip"]["url"])

    reference = reference_masks(visus.config.resolved_model_dir / "sam2" / "sam2.1_hiera_micro.pt", folder)
    assert [f["frame_index"] for f in served["frames"]] == list(range(N))
    for frame in served["frames"]:
        ours = {o["object_id"]: decode_rle(o["rle"]) for o in frame["objects"]}
        theirs = reference[frame["frame_index"]]
        assert set(ours) == set(theirs) == {1, 2}
        for obj, mask in theirs.items():
            assert mask.any(), "the tiny model must give non-empty masks, or this test could not fail"
            assert np.array_equal(ours[obj], mask), f"frame {frame['frame_index']} object {obj}"

    assert out["video"]["content_type"] == "video/mp4"
    info = probe_video(video_file.content)
    assert (info.num_frames, info.width, info.height, info.fps) == (N, W, H, 12)
    # The mask video, rendered by ranges on the workers and joined: each frame shows that frame's masks.
    for index, frame in enumerate(read_frames(video_file.content, 0, N)):
        drawn, union = frame.max(axis=2) > 60, reference[index][1] | reference[index][2]
        assert (drawn & union).sum() / (drawn | union).sum() > 0.9, f"frame {index}"
    with zipfile.ZipFile(io.BytesIO(boxes_zip.content)) as archive:
        names = archive.namelist()
        assert len(names) == N and names == sorted(names)
        assert Image.open(archive.open(names[0])).size == (W, H)


def test_streaming_run_sends_each_frame_as_it_is_made(visus, clip):
    video, _ = clip
    body = {"video_url": data_uri(video, "video/quicktime"), "apply_mask": True,
            "box_prompts": [{"x_min": 2, "y_min": 6, "x_max": 20, "y_max": 26}]}
    with visus.client() as http, http.stream("POST", "/fal-ai/sam2/video/stream", json=body) as response:
        assert response.status_code == 200
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    frames = [e["data"] for e in events if "data" in e]
    assert sorted(f["frame_index"] for f in frames) == list(range(N))
    assert all(f["object_ids"] == [0] and len(f["masks"]) == 1 and f["masks"][0]["size"] == [H, W] for f in frames)
    assert "video" in events[-1]
    assert any("range 1/" in log["message"] for e in events for log in e.get("logs") or [])


def test_status_stream_of_a_queued_job_sends_each_frame(visus, clip):
    video, _ = clip
    body = {"video_url": data_uri(video, "video/quicktime"), "return_masks_rle": True,
            "box_prompts": [{"x_min": 2, "y_min": 6, "x_max": 20, "y_max": 26, "object_id": 3}]}
    with visus.client() as http:
        submitted = http.post("/queue/fal-ai/sam2/video", json=body).json()
        with http.stream("GET", submitted["status_url"] + "/stream", params={"logs": "1"}) as response:
            assert response.status_code == 200
            events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
        served = json.loads(http.get(http.get(submitted["response_url"]).json()["masks_rle"]["url"]).content)
    frames = [e["data"] for e in events if "data" in e]
    assert all(e["status"] == "IN_PROGRESS" and e["request_id"] == submitted["request_id"] for e in events
               if "data" in e)
    assert sorted(f["frame_index"] for f in frames) == list(range(N))  # each frame once
    final = {f["frame_index"]: f["objects"][0]["rle"] for f in served["frames"]}
    assert all(f["object_ids"] == [3] and f["masks"][0] == final[f["frame_index"]] for f in frames)
    assert events[-1]["status"] == "COMPLETED"
    statuses = [e["status"] for e in events if "data" not in e]
    assert statuses[0] in ("IN_QUEUE", "IN_PROGRESS") and statuses.count("COMPLETED") == 1


@pytest.mark.parametrize("case", ["not a video", "frame past the end", "box outside", "no prompt", "point outside"])
def test_bad_video_input_is_a_4xx_naming_the_field(visus, clip, case):
    video = data_uri(clip[0], "video/quicktime")
    body, field = {
        "not a video": ({"video_url": png_data_uri(32, 32), "prompts": [{"x": 1, "y": 1}]}, "video_url"),
        "frame past the end": ({"video_url": video, "prompts": [{"x": 1, "y": 1, "frame_index": N}]}, "frame_index"),
        "box outside": ({"video_url": video, "box_prompts": [{"x_min": 100, "y_min": 1, "x_max": 120,
                                                              "y_max": 9}]}, "box_prompts"),
        "no prompt": ({"video_url": video}, "prompts"),
        "point outside": ({"video_url": video, "prompts": [{"x": W, "y": 1}]}, "prompts"),
    }[case]
    with visus.client() as http:
        response = http.post("/fal-ai/sam2/video", json=body)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])
