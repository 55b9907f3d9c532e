"""SAM 2.1 video: chunked encoding + propagation equals the plain sam2 video predictor.

The micro checkpoint (random weights, biased object score, models.md 1.6) runs on a synthetic
H.264 clip. The reference is the package's own ``init_state`` (from a JPEG folder) /
``add_new_points_or_box`` / ``propagate_in_video`` forward then backward; its last result per
frame is what a caller keeps.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.sam2_video import (
    ObjectPrompt,
    Sam2VideoPropagator,
    Step,
    _new_inference_state,
    encode_frames,
    frames_to_model_input,
    load_sam2_video_predictor,
    plan_steps,
)
from models.tiny import write_tiny_sam2
from models.video_io import Mp4Writer, read_frames

torch.set_num_threads(1)

N, H, W = 20, 48, 64
# Fewer past object pointers than the default 16, so that 20 frames exercise the trimming of
# old tracking records (window = max(4 - 1, 1 + 5) = 6 frames instead of 15).
SHORT_MEMORY = ["++model.max_obj_ptrs_in_encoder=4"]

POINTS_BOX_LATER = [  # two objects, a point and a box, a second prompt for object 1 later on
    ObjectPrompt(1, 6, points=[(12.0, 15.0)], labels=[1]),
    ObjectPrompt(2, 6, box=(35.0, 25.0, 62.0, 46.0)),
    ObjectPrompt(1, 13, points=[(40.0, 16.0), (5.0, 5.0)], labels=[1, 0]),
]
FIRST_PROMPT_LATER = [  # object 2 is tracked on frames 6-10 before its only prompt
    ObjectPrompt(1, 6, points=[(12.0, 15.0)], labels=[1]),
    ObjectPrompt(2, 11, box=(20.0, 25.0, 50.0, 46.0)),
]
RECT = np.zeros((H, W), bool)
RECT[8:24, 8:26] = True
MASK_AND_POINT = [
    ObjectPrompt(1, 4, mask=RECT),
    ObjectPrompt(2, 4, points=[(50.0, 36.0)], labels=[1]),
]


def synthetic_frames() -> np.ndarray:
    frames = np.full((N, H, W, 3), 30, np.uint8)
    for i in range(N):
        frames[i, 8:24, 2 + 2 * i:18 + 2 * i] = (220, 40, 40)
        frames[i, 28:44, 44 - i:60 - i] = (40, 200, 60)
    return frames


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_tiny_sam2(tmp_path_factory.mktemp("sam2"))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A JPEG folder for the reference predictor and the very pixels it will decode from it."""
    buf = io.BytesIO()
    with Mp4Writer(buf, fps=24, width=W, height=H, crf=12, gop_size=4) as writer:
        for frame in synthetic_frames():
            writer.write(frame)
    folder = tmp_path_factory.mktemp("jpg")
    for i, frame in enumerate(read_frames(buf.getvalue(), 0, N)):
        Image.fromarray(frame).save(folder / f"{i}.jpg", quality=95)
    frames = np.stack([np.array(Image.open(folder / f"{i}.jpg").convert("RGB")) for i in range(N)])
    return folder, frames


@pytest.fixture(scope="module")
def predictors(ckpt):
    """(reference, ours) per config: separate instances, so our hook never reaches the reference."""
    cache = {}

    def get(overrides=()):
        key = tuple(overrides)
        if key not in cache:
            cache[key] = tuple(
                load_sam2_video_predictor(ckpt, overrides=list(key)) for _ in range(2)
            )
        return cache[key]

    return get


@pytest.fixture(scope="module")
def features(predictors, video):
    return encode_frames(predictors()[1], video[1])


def reference_run(predictor, folder, prompts, autocast=False) -> dict[int, torch.Tensor]:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    final = {}
    with ctx:
        state = predictor.init_state(str(folder))
        for p in prompts:
            if p.mask is not None:
                predictor.add_new_mask(state, p.frame_idx, p.obj_id, p.mask)
            else:
                predictor.add_new_points_or_box(
                    state, p.frame_idx, p.obj_id, points=p.points or None,
                    labels=p.labels or None, box=p.box,
                )
        for reverse in (False, True):
            for f, _, logits in predictor.propagate_in_video(state, reverse=reverse):
                final[f] = logits[:, 0].float().clone()
    return final


def chunked_run(predictor, features, prompts, chunk_size, autocast_dtype=None, on_step=None):
    prop = Sam2VideoPropagator(predictor, N, H, W, prompts, chunk_size, autocast_dtype)
    prop.prepare({f: features[f] for f in prop.prompt_frames})
    out: dict[int, torch.Tensor] = {}
    for step in prop.remaining_steps:
        for res in prop.run_step(features[step.start:step.stop]):
            assert res.frame_idx not in out, "a frame was yielded twice"
            assert res.obj_ids == prop.obj_ids
            out[res.frame_idx] = res.mask_logits
        if on_step is not None:
            on_step(prop)
    assert prop.done
    return out


def assert_same(ours: dict, ref: dict) -> None:
    assert sorted(ours) == sorted(ref) == list(range(N))
    diff = max((ours[f] - ref[f]).abs().max().item() for f in range(N))
    assert diff <= 1e-5, diff
    for f in range(N):
        assert torch.equal(ours[f] > 0, ref[f] > 0), f
        # Random weights can blank masks entirely (models.md 1.6); these must not be.
        assert (ref[f] > 0).flatten(1).any(dim=1).all(), f"empty mask on frame {f}"


@pytest.mark.parametrize(
    "prompts, overrides, chunk_size",
    [
        (POINTS_BOX_LATER, [], 4),
        (POINTS_BOX_LATER, SHORT_MEMORY, 3),
        (MASK_AND_POINT, SHORT_MEMORY, 7),
    ],
    ids=["points_box_later", "short_memory", "mask"],
)
def test_chunked_equals_plain_predictor(predictors, video, prompts, overrides, chunk_size):
    ref_pred, our_pred = predictors(overrides)
    feats = encode_frames(our_pred, video[1])
    ref = reference_run(ref_pred, video[0], prompts)

    def check_bounded(prop):
        state = prop._state
        assert not state["cached_features"]  # every frame's features dropped once processed
        for out in state["output_dict_per_obj"].values():
            # Records behind the window go, except those the backward pass will read.
            assert len(out["non_cond_frame_outputs"]) <= 2 * (prop._window + 1)

    calls = []
    real = our_pred.forward_image
    our_pred.forward_image = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        ours = chunked_run(our_pred, feats, prompts, chunk_size, on_step=check_bounded)
    finally:
        del our_pred.forward_image
    assert calls == []  # the encoder never runs during propagation: features are injected
    assert_same(ours, ref)


def test_short_memory_trims_records(predictors, features):
    _, pred = predictors(SHORT_MEMORY)
    seen = []
    chunked_run(pred, features, POINTS_BOX_LATER, 4, on_step=lambda p: seen.append(
        sorted(p._state["output_dict_per_obj"][1]["non_cond_frame_outputs"])))
    # After the forward pass only the last window and the frames just after frame 6 remain.
    assert seen[3] == [7, 8, 9, 10, 11, 12, *range(13, 20)]  # 6 <= f <= 12 kept for backward
    assert seen[-1] == [0, 1, 2, 3, 4, 5]  # at frame 0 nothing past 0 + 6 is needed


def test_object_first_prompted_later(predictors, video, features):
    ref_pred, our_pred = predictors()
    # The plain predictor cannot track an object before its only prompt in fp32 (models.md 1.10) ...
    with pytest.raises(RuntimeError, match="same dtype"):
        reference_run(ref_pred, video[0], FIRST_PROMPT_LATER)
    # ... under bf16 autocast it can, and the chunked path matches it.
    ref = reference_run(ref_pred, video[0], FIRST_PROMPT_LATER, autocast=True)
    bf16_features = encode_frames(our_pred, video[1], autocast_dtype=torch.bfloat16)
    assert bf16_features[0][0].dtype == torch.bfloat16
    ours = chunked_run(
        our_pred, bf16_features, FIRST_PROMPT_LATER, 5, autocast_dtype=torch.bfloat16
    )
    assert_same(ours, ref)
    # In fp32 the propagator's memory upcast makes it work too.
    fp32 = chunked_run(our_pred, features, FIRST_PROMPT_LATER, 5)
    assert all((fp32[f] > 0).flatten(1).any(dim=1).all() for f in range(N))


def test_resume_from_exported_state_is_identical(predictors, ckpt, features):
    _, pred = predictors()
    blobs, per_step = [], []

    def export(prop):
        blobs.append(prop.export_state())
        per_step.append(prop.next_step)

    full = chunked_run(pred, features, POINTS_BOX_LATER, 4, on_step=export)
    prop0 = Sam2VideoPropagator(pred, N, H, W, POINTS_BOX_LATER, 4)
    steps = prop0.steps
    assert [(s.start, s.stop, s.reverse) for s in steps] == [
        (6, 8, False), (8, 12, False), (12, 16, False), (16, 20, False), (4, 7, True), (0, 4, True)]
    assert max(len(b) for b in blobs) < 400_000

    fresh = load_sam2_video_predictor(ckpt)  # another "replica" with the same checkpoint
    for k in (1, 3, 4, 5):  # mid-forward, before the backward pass, mid-backward
        resumed = Sam2VideoPropagator.from_state(fresh, blobs[k - 1])
        assert resumed.next_step == k and resumed.remaining_steps == steps[k:]
        got = {}
        for step in resumed.remaining_steps:
            for res in resumed.run_step({f: features[f] for f in range(step.start, step.stop)}):
                got[res.frame_idx] = res.mask_logits
        # Frame 6, the first prompted frame, comes out of the backward pass only.
        expected = {f for s in steps[k:] for f in s.frames if s.reverse or f != 6}
        assert set(got) == expected
        for f, logits in got.items():
            assert torch.equal(logits, full[f]), (k, f)
    done = Sam2VideoPropagator.from_state(fresh, blobs[-1])
    assert done.done and done.remaining_steps == []


def test_features_match_the_predictors_own_encoding(predictors, video, features):
    ref_pred, our_pred = predictors()
    state = ref_pred.init_state(str(video[0]))
    # Our array preprocessing is bitwise the package's JPEG loader on the same pixels.
    assert torch.equal(frames_to_model_input(video[1], ref_pred.image_size), state["images"])
    prop = Sam2VideoPropagator(our_pred, N, H, W, POINTS_BOX_LATER, 4)
    prop._inject(0, features[0])
    with torch.inference_mode():
        for f in (0, 7, 19):
            out = ref_pred.forward_image(state["images"][f:f + 1])
            assert all(torch.equal(a, b) for a, b in zip(out["backbone_fpn"], features[f]))
        assert all(torch.equal(a, b) for a, b in zip(out["vision_pos_enc"], prop._pos_enc))
    # Shapes as the video predictor caches them, on CPU, not views of a bigger batch.
    s = ref_pred.image_size
    sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    assert [tuple(t.shape[2:]) for t in features[0]] == sizes
    for t in features[3]:
        assert t.device.type == "cpu" and t.untyped_storage().nbytes() == t.nbytes
    # The same keys as init_state, so the predictor finds everything it reads.
    assert _new_inference_state(our_pred, N, H, W).keys() == state.keys()


def test_batched_encoding_is_close(predictors, video, features):
    batched = encode_frames(predictors()[1], video[1][:5], batch_size=4)
    assert len(batched) == 5
    for a, b in zip(batched, features[:5]):
        assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a, b))
        assert all(x.untyped_storage().nbytes() == x.nbytes for x in a)


def test_plan_steps():
    assert plan_steps(10, 0, 4) == [Step(0, 4, False), Step(4, 8, False), Step(8, 10, False)]
    assert plan_steps(10, 5, 4) == [
        Step(5, 8, False), Step(8, 10, False), Step(4, 6, True), Step(0, 4, True)]
    assert plan_steps(10, 4, 4)[-2:] == [Step(4, 5, True), Step(0, 4, True)]
    assert plan_steps(3, 2, 1) == [
        Step(2, 3, False), Step(2, 3, True), Step(1, 2, True), Step(0, 1, True)]
    assert list(Step(4, 7, True).frames) == [6, 5, 4]
    for args in ((10, 10, 4), (10, -1, 4), (10, 0, 0)):
        with pytest.raises(ValueError):
            plan_steps(*args)


def test_misuse_raises(predictors, features):
    _, pred = predictors()
    prop = Sam2VideoPropagator(pred, N, H, W, POINTS_BOX_LATER, 4)
    assert prop.prompt_frames == [6, 13]
    with pytest.raises(RuntimeError, match="prepare"):
        prop.run_step(features[6:8])
    with pytest.raises(ValueError, match=r"prompted frames \[13\]"):
        prop.prepare({6: features[6]})
    prop.prepare({f: features[f] for f in (6, 13)})
    with pytest.raises(ValueError, match="needs 2 frames"):
        prop.run_step(features[6:9])
    with pytest.raises(ValueError, match=r"missing for frames \[7\]"):
        prop.run_step({6: features[6]})
    with pytest.raises(ValueError, match="3 tensors"):
        list(prop.run_step({6: features[6][:2], 7: features[7]}))
    prop = Sam2VideoPropagator(pred, N, H, W, POINTS_BOX_LATER, 4)
    prop.prepare({f: features[f] for f in (6, 13)})
    it = prop.run_step(features[6:8])
    with pytest.raises(RuntimeError, match="between two complete steps"):
        prop.export_state()
    next(it)
    it.close()  # abandoned half-way: the state is no longer at a boundary
    with pytest.raises(RuntimeError, match="abandoned"):
        prop.run_step(features[8:12])
    with pytest.raises(ValueError, match="supported version"):
        Sam2VideoPropagator.from_state(pred, _torch_bytes({"version": 99}))
    with pytest.raises(ValueError, match="not a SAM 2 propagator state"):
        Sam2VideoPropagator.from_state(pred, b"garbage")


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "prompts, match",
    [
        ([], "at least one prompt"),
        ([ObjectPrompt(1, 20, points=[(1, 1)], labels=[1])], "outside"),
        ([ObjectPrompt(1, 0)], "no point, box, mask or embedding"),
        ([ObjectPrompt(1, 0, points=[(1, 1)], labels=[])], "labels"),
        ([ObjectPrompt(1, 0, points=[(1, 1, 1)], labels=[1])], "pairs"),
        ([ObjectPrompt(1, 0, points=[(1, 1)], labels=[3])], "labels"),
        ([ObjectPrompt(1, 0, box=(0, 0, 5))], "box"),
        ([ObjectPrompt(1, 0, box=(0, 0, 5, float("nan")))], "finite"),
        ([ObjectPrompt(1, 0, mask=np.ones((4, 4), bool))], "mask"),
        ([ObjectPrompt(1, 0, mask=RECT, box=(0, 0, 5, 5))], "not both"),
        ([ObjectPrompt("a", 0, box=(0, 0, 5, 5))], "obj_id"),
        ([ObjectPrompt(1, 0, box=(0, 0, 5, 5)), ObjectPrompt(1, 0, box=(1, 1, 5, 5))],
         "two prompts"),
    ],
)
def test_bad_prompts_raise(predictors, prompts, match):
    with pytest.raises(ValueError, match=match):
        Sam2VideoPropagator(predictors()[1], N, H, W, prompts, 4)


def test_box_corners_are_normalised(predictors):
    prompts = [ObjectPrompt(3, 2, box=(30, 40, 10, 5))]
    prop = Sam2VideoPropagator(predictors()[1], N, H, W, prompts, 4)
    assert prop.prompts[0].box == (10.0, 5.0, 30.0, 40.0)
