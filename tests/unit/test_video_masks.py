"""Video mask outputs: RLE, the per-frame store, rendered frames and the box-overlay zip."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from models.video_masks import (
    OBJECT_COLORS, BoxFramesZip, FrameMasks, color_for, decode_rle, draw_boxes, encode_rle,
    mask_box, render_frame,
)

# pycocotools 2.0.11's decode trips numpy 2's __array__(copy=) deprecation; harmless, upstream's.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
RNG = np.random.default_rng(7)


def rect(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_palette_is_distinct_and_cycles():
    assert len(OBJECT_COLORS) >= 10 and len(set(OBJECT_COLORS)) == len(OBJECT_COLORS)
    assert color_for(3) == OBJECT_COLORS[3]
    assert color_for(len(OBJECT_COLORS) + 1) == OBJECT_COLORS[1]


@pytest.mark.parametrize("mask", [
    RNG.random((17, 23)) > 0.5,
    np.zeros((5, 7), dtype=bool),
    np.ones((9, 4), dtype=bool),
    np.ones((1, 1), dtype=bool),
    rect(31, 13, 2, 30, 0, 1),
])
def test_rle_round_trip(mask):
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    back = json.loads(json.dumps(rle))
    for r in (back, {**back, "counts": back["counts"].encode()}):
        out = decode_rle(r)
        assert out.dtype == bool and np.array_equal(out, mask)


def test_mask_box():
    assert mask_box(np.zeros((4, 6), dtype=bool)) is None
    assert mask_box(rect(10, 12, 2, 5, 3, 9)) == [3, 2, 8, 4]
    one = np.zeros((4, 6), dtype=bool)
    one[3, 5] = True
    assert mask_box(one) == [5, 3, 5, 3]


def test_frame_masks_store_and_json_round_trip():
    fm = FrameMasks(8, 10)
    a, b = rect(8, 10, 1, 4, 2, 6), np.zeros((8, 10), dtype=bool)
    fm.add(5, [2, 1], np.stack([a, b]))
    fm.add(0, [1], a[None])
    assert len(fm) == 2 and 5 in fm and 3 not in fm and fm.get(3) == {}
    got = fm.get(5)
    assert sorted(got) == [1, 2] and np.array_equal(got[2], a) and not got[1].any()
    assert list(fm.rles(5)) == [1, 2]
    data = json.loads(json.dumps(fm.to_json()))
    assert data["height"] == 8 and data["width"] == 10
    assert [f["frame_index"] for f in data["frames"]] == [0, 5]
    objs = data["frames"][1]["objects"]
    assert [o["object_id"] for o in objs] == [1, 2]
    assert objs[0]["box"] is None and objs[1]["box"] == [2, 1, 5, 3]
    again = FrameMasks.from_json(data)
    assert again.to_json() == data and np.array_equal(again.get(5)[2], a)
    with pytest.raises(ValueError):
        fm.add(1, [1], np.zeros((1, 8, 9), dtype=bool))


def test_overlay_blends_only_inside_masks_later_on_top():
    frame = RNG.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    m1, m2 = rect(6, 9, 0, 4, 0, 4), rect(6, 9, 2, 6, 2, 6)
    out = render_frame(frame, {2: m2, 1: m1}, 6, 9, apply_mask=True, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (6, 9, 3)
    outside = ~(m1 | m2)
    assert np.array_equal(out[outside], frame[outside])
    only1 = m1 & ~m2
    want1 = np.rint(frame[only1] * 0.5 + np.array(color_for(1)) * 0.5)
    assert np.array_equal(out[only1], want1)
    both = m1 & m2
    want = np.rint((frame[both] * 0.5 + np.array(color_for(1)) * 0.5) * 0.5
                   + np.array(color_for(2)) * 0.5)
    assert np.abs(out[both].astype(int) - want).max() <= 1
    assert np.array_equal(render_frame(frame, {}, 6, 9, apply_mask=True), frame)


def test_mask_mode_black_white_and_colours():
    m1, m2 = rect(6, 9, 0, 3, 0, 3), rect(6, 9, 3, 6, 5, 9)
    single = render_frame(None, {4: m1}, 6, 9, apply_mask=False)
    assert (single[m1] == 255).all() and (single[~m1] == 0).all()
    multi = render_frame(None, {1: m1, 2: m2}, 6, 9, apply_mask=False)
    assert (multi[m1] == color_for(1)).all() and (multi[m2] == color_for(2)).all()
    assert (multi[~(m1 | m2)] == 0).all()
    assert not render_frame(None, {}, 6, 9, apply_mask=False).any()


def test_draw_boxes_touches_only_the_border():
    frame = np.zeros((20, 24, 3), dtype=np.uint8)
    mask = rect(20, 24, 4, 15, 5, 18)  # box [5, 4, 17, 14]
    out = draw_boxes(frame, {3: mask})
    assert not frame.any()  # the input is left alone
    changed = out.any(axis=2)
    border = rect(20, 24, 4, 15, 5, 18) & ~rect(20, 24, 6, 13, 7, 16)
    assert np.array_equal(changed, border)
    assert (out[border] == color_for(3)).all()
    assert np.array_equal(draw_boxes(frame, {1: np.zeros((20, 24), bool)}), frame)


def test_box_frames_zip(tmp_path):
    frames = {i: RNG.integers(0, 256, size=(12, 18, 3), dtype=np.uint8) for i in (0, 7, 123)}
    buf = io.BytesIO()
    with BoxFramesZip(buf) as z:
        for i, f in frames.items():
            z.add(i, f)
        with pytest.raises(ValueError):
            z.add(7, frames[7])
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert names == sorted(names) == ["frame_000000.jpg", "frame_000007.jpg",
                                          "frame_000123.jpg"]
        with Image.open(io.BytesIO(zf.read(names[2]))) as im:
            assert im.format == "JPEG" and im.size == (18, 12)
    path = tmp_path / "boxes.zip"
    z = BoxFramesZip(path)
    z.add(1, frames[0])
    z.close()
    z.close()
    assert zipfile.ZipFile(path).namelist() == ["frame_000001.jpg"]


def test_only_keeps_one_object_under_a_new_id():
    store = FrameMasks(4, 5)
    a = np.zeros((4, 5), bool)
    a[1:3, 1:4] = True
    b = ~a
    store.add(0, [3, 7], np.stack([a, b]))
    store.add(2, [7], b[None])
    only = store.only(7)
    assert len(only) == 2 and only.to_json()["frames"][0]["objects"][0]["object_id"] == 0
    assert np.array_equal(only.get(0)[0], b) and np.array_equal(only.get(2)[0], b)
    assert len(store.only(3)) == 1 and np.array_equal(store.only(3, new_id=5).get(0)[5], a)
