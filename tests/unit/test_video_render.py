"""Rendering by frame ranges and joining the segments without re-encoding (models/video_render.py)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from models.video_io import probe_video, read_frames
from models.video_masks import FrameMasks
from models.video_render import SegmentMismatch, join_segments, render_range
from tests.helpers import lossless_video, moving_squares

N, W, H = 14, 64, 48


@pytest.fixture(scope="module")
def clip():
    video = lossless_video(moving_squares(N, W, H))
    masks = FrameMasks(H, W)
    for i in range(N):
        m = np.zeros((2, H, W), bool)
        m[0, 10:20, i * 2:i * 2 + 10] = True
        m[1, 30:40, 40:50] = i % 3 == 0
        masks.add(i, [1, 2], m)
    return video, masks


def ranges(step: int) -> list[tuple[int, int]]:
    return [(s, min(s + step, N)) for s in range(0, N, step)]


@pytest.mark.parametrize("apply_mask", [True, False])
def test_joined_ranges_are_the_whole_video(clip, apply_mask):
    video, masks = clip
    fps = probe_video(video).fps
    whole = render_range(video, 0, N, masks, fps, apply_mask, False)
    parts = [render_range(video if apply_mask else None, s, e, masks, fps, apply_mask, False) for s, e in ranges(4)]
    joined = join_segments([p.video for p in parts])
    info = probe_video(joined)
    assert (info.num_frames, info.fps, info.width, info.height) == (N, fps, W, H)
    ours, theirs = read_frames(joined, 0, N).astype(int), read_frames(whole.video, 0, N).astype(int)
    assert np.abs(ours - theirs).mean() < 3  # the same pictures, up to H.264 loss
    assert read_frames(joined, 9, 11).shape == (2, H, W, 3)  # seeking into a later segment works
    with av.open(io.BytesIO(joined)) as container:  # timestamps a frame apart, in order
        pts = [f.pts for f in container.decode(video=0)]
    assert np.unique(np.diff(pts)).size == 1 and pts == sorted(pts)


def test_ntsc_rate_and_uneven_ranges_join(clip):
    _, masks = clip
    fps = Fraction(30000, 1001)
    parts = [render_range(None, s, e, masks, fps, False, False) for s, e in [(0, 5), (5, 6), (6, 14)]]
    info = probe_video(join_segments([p.video for p in parts]))
    assert (info.num_frames, info.fps) == (N, fps)


def test_box_frames_come_per_range(clip):
    video, masks = clip
    part = render_range(video, 4, 8, masks, Fraction(12), True, True)
    assert [i for i, _ in part.box_frames] == [4, 5, 6, 7]
    assert Image.open(io.BytesIO(part.box_frames[0][1])).size == (W, H)


def test_segments_of_other_settings_are_refused(clip):
    video, masks = clip
    small = FrameMasks(32, 32)
    for i in range(2):
        small.add(i, [1], np.ones((1, 32, 32), bool))
    a = render_range(None, 0, 2, masks, Fraction(12), False, False)
    b = render_range(None, 0, 2, small, Fraction(12), False, False)
    with pytest.raises(SegmentMismatch):
        join_segments([a.video, b.video])


def test_overlay_needs_the_video_and_a_range_inside_it(clip):
    video, masks = clip
    with pytest.raises(ValueError):
        render_range(None, 0, 2, masks, Fraction(12), True, False)
    with pytest.raises(ValueError):
        render_range(video, 10, 20, masks, Fraction(12), True, False)
