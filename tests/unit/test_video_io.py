"""PyAV helpers: probing, frame-exact range decoding, incremental H.264 writing."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from models.video_io import (
    Mp4Writer,
    VideoDecodeError,
    iter_frames,
    probe_video,
    read_frames,
)

N, H, W = 16, 48, 64


def synthetic_frames(n: int = N, height: int = H, width: int = W) -> np.ndarray:
    """Two squares moving in opposite directions, so every frame looks different."""
    frames = np.full((n, height, width, 3), 30, np.uint8)
    for i in range(n):
        frames[i, 8:24, 2 + 2 * i:18 + 2 * i] = (220, 40, 40)
        frames[i, 28:44, width - 20 - i:width - 4 - i] = (40, 200, 60)
    return frames


@pytest.fixture(scope="module")
def mp4() -> bytes:
    buf = io.BytesIO()
    # A short GOP so that ranges start between keyframes and seeking has to pre-roll.
    with Mp4Writer(buf, fps=24, width=W, height=H, crf=12, gop_size=5) as writer:
        for frame in synthetic_frames():
            writer.write(frame)
    assert writer.frames_written == N
    return buf.getvalue()


def test_probe(mp4, tmp_path):
    info = probe_video(mp4)
    assert (info.num_frames, info.fps, info.width, info.height) == (N, Fraction(24), W, H)
    assert info.size == (H, W)
    assert info.duration == pytest.approx(N / 24, abs=0.05)
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4)
    assert probe_video(path) == probe_video(str(path)) == probe_video(io.BytesIO(mp4)) == info


def test_full_decode_is_close_to_the_source(mp4):
    frames = read_frames(mp4, 0, N)
    assert frames.shape == (N, H, W, 3) and frames.dtype == np.uint8
    err = np.abs(frames.astype(int) - synthetic_frames().astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 6  # lossy, but each frame is recognisably its own source frame


@pytest.mark.parametrize(
    "start, stop", [(0, 1), (3, 4), (5, 10), (7, 12), (11, 16), (15, 16), (0, N)]
)
def test_range_decoding_is_frame_exact(mp4, start, stop):
    full = read_frames(mp4, 0, N)
    part = read_frames(mp4, start, stop)
    assert np.array_equal(part, full[start:stop])
    assert [i for i, _ in iter_frames(mp4, start, stop)] == list(range(start, stop))


def test_iter_frames_to_the_end_and_empty_range(mp4):
    assert [i for i, _ in iter_frames(mp4, 13)] == [13, 14, 15]
    assert list(iter_frames(mp4, 4, 4)) == []
    with pytest.raises(ValueError):
        list(iter_frames(mp4, 5, 4))


def test_range_past_the_end_raises(mp4):
    with pytest.raises(VideoDecodeError, match="ended at frame 16"):
        read_frames(mp4, 14, 18)


def test_odd_size_is_padded_and_fractional_fps_kept():
    buf = io.BytesIO()
    with Mp4Writer(buf, fps=Fraction(30000, 1001), width=33, height=25) as writer:
        for frame in synthetic_frames(3, 25, 33):
            writer.write(frame)
        with pytest.raises(ValueError, match="uint8 frame"):
            writer.write(np.zeros((25, 34, 3), np.uint8))
    info = probe_video(buf.getvalue())
    assert (info.num_frames, info.width, info.height) == (3, 34, 26)
    assert info.fps == Fraction(30000, 1001)


def test_webm_without_frame_count_is_counted():
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libvpx-vp9", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in synthetic_frames(7):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    info = probe_video(buf.getvalue())
    assert info.num_frames == 7 and info.fps == 10
    assert [i for i, _ in iter_frames(buf.getvalue(), 2, 5)] == [2, 3, 4]


def _wav() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        samples = np.zeros((1, 800), np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_frames(1)[0]).save(buf, "PNG")
    return buf.getvalue()


def _no_frames() -> bytes:
    buf = io.BytesIO()
    # AVI keeps a video stream that has no frame in it (mp4 and mkv drop or reject it).
    with av.open(buf, "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        out.start_encoding()  # header only
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"this is not a video at all" * 10, "not a video"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "still image|not a video"),
        (_png(), "still image"),
        (_wav(), "no video stream"),
        (_no_frames(), "no frames"),
    ],
)
def test_bad_videos_raise(data, match):
    with pytest.raises(VideoDecodeError, match=match):
        probe_video(data)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        probe_video(tmp_path / "nope.mp4")


def test_writer_close_is_idempotent(tmp_path):
    writer = Mp4Writer(tmp_path / "a.mp4", fps=5, width=W, height=H)
    writer.write(synthetic_frames(1)[0])
    writer.close()
    writer.close()
    assert probe_video(tmp_path / "a.mp4").num_frames == 1
