"""Video files with PyAV: probe, frame-exact decoding of a frame range, incremental H.264 writing.

Frame ``i`` of a video is the ``i``-th frame in presentation order. Range decoding seeks to the
keyframe before the range instead of decoding from the start, and identifies frames by their
timestamps, which assumes a constant frame rate (what cameras, phones and our own writer produce).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence, Union

import av
import numpy as np

VideoSource = Union[str, Path, bytes, BinaryIO]


class VideoDecodeError(ValueError):
    """The data is not a video we can use; the message is meant for the API user."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: Fraction
    width: int
    height: int
    duration: float  # seconds

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``, the order numpy frames use."""
        return self.height, self.width


def _open(source: VideoSource):
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise VideoDecodeError("the video is empty (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, Path):
        source = str(source)
    elif hasattr(source, "seek"):
        source.seek(0)
    try:
        container = av.open(source, "r")
    except FileNotFoundError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise VideoDecodeError(f"the data is not a video in a supported format: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError("the file has no video stream")
    if container.format.name.endswith("_pipe") or container.format.name == "image2":
        container.close()
        raise VideoDecodeError("the file is a still image, not a video")
    return container


def _frame_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoDecodeError("the video has no usable frame rate")
    return Fraction(rate)


def _first_pts(stream) -> int:
    return stream.start_time if stream.start_time is not None else 0


def _frame_index(frame, stream, t0: int, fps: Fraction) -> int:
    # Fractions keep this exact for rates such as 30000/1001.
    return round((frame.pts - t0) * stream.time_base * fps)


def probe_video(source: VideoSource) -> VideoInfo:
    """Read the header (and the first frame, to check the codec) of ``source``.

    The frame count comes from the container when it records one (mp4, mov) and otherwise from
    counting the video packets, which needs no decoding (webm, mkv).
    """
    with _open(source) as container:
        stream = container.streams.video[0]
        fps = _frame_rate(stream)
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"the video could not be decoded: {exc}") from None
        num_frames = int(stream.frames or 0)
        if first is not None and num_frames <= 0:
            with _open(source) as again:
                vs = again.streams.video[0]
                num_frames = sum(1 for p in again.demux(vs) if p.size and not p.is_discard)
        if first is None or num_frames <= 0:
            raise VideoDecodeError("the video has no frames")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = float(num_frames / fps)
        return VideoInfo(
            num_frames=num_frames,
            fps=fps,
            width=int(first.width),
            height=int(first.height),
            duration=duration,
        )


def iter_frames(
    source: VideoSource, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, (H, W, 3) uint8 RGB)`` for frames ``start <= index < stop``, in order.

    Decoding starts at the keyframe before ``start``, so the cost grows with the distance to that
    keyframe (the GOP length), not with ``start``.
    """
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"bad frame range [{start}, {stop})")
    if stop == start:
        return
    with _open(source) as container:
        stream = container.streams.video[0]
        fps = _frame_rate(stream)
        t0 = _first_pts(stream)
        if start > 0:
            # Floor, so that the target is never past the first wanted frame's timestamp.
            target = t0 + int(Fraction(start) / fps / stream.time_base)
            container.seek(target, stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                idx = _frame_index(frame, stream, t0, fps)
                if idx < start:
                    continue
                if stop is not None and idx >= stop:
                    break
                yield idx, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"the video could not be decoded: {exc}") from None


def read_frames(source: VideoSource, start: int, stop: int) -> np.ndarray:
    """Frames ``[start, stop)`` as one ``(stop - start, H, W, 3)`` uint8 RGB array.

    Raises :class:`VideoDecodeError` when the video does not hold every frame of the range.
    """
    frames = []
    for expected, (idx, frame) in enumerate(iter_frames(source, start, stop), start):
        if idx != expected:
            raise VideoDecodeError(
                f"frame {expected} is missing from the video (next decoded frame is {idx}); "
                "variable frame rate videos are not supported"
            )
        frames.append(frame)
    if len(frames) != stop - start:
        raise VideoDecodeError(
            f"the video ended at frame {start + len(frames)}, before the end of the range "
            f"[{start}, {stop})"
        )
    return np.stack(frames)


def read_frames_at(source: VideoSource, indices: Sequence[int]) -> np.ndarray:
    """The frames at ascending ``indices`` as one ``(len(indices), H, W, 3)`` uint8 RGB array.

    One decode pass from the keyframe before the first index to the last one; frames in between
    that are not wanted are decoded and dropped.
    """
    wanted = [int(i) for i in indices]
    if not wanted:
        raise ValueError("no frame indices given")
    if any(b <= a for a, b in zip(wanted, wanted[1:])) or wanted[0] < 0:
        raise ValueError(f"frame indices must be ascending and distinct, got {wanted[:8]}")
    keep = set(wanted)
    frames = [frame for idx, frame in iter_frames(source, wanted[0], wanted[-1] + 1) if idx in keep]
    if len(frames) != len(wanted):
        raise VideoDecodeError(f"the video holds {len(frames)} of the {len(wanted)} frames asked for "
                               f"between {wanted[0]} and {wanted[-1]}")
    return np.stack(frames)


class Mp4Writer:
    """Write RGB frames one at a time to an H.264 (libx264, yuv420p) mp4 file or binary stream.

    yuv420p needs even sizes, so an odd width or height is padded by repeating the last column
    or row. ``gop_size`` defaults to about one second, which keeps range decoding of the output
    cheap (models.md 6.3). ``b_frames=False`` makes decode order equal display order, so files
    written separately can be joined by copying packets (models.video_render).
    """

    def __init__(
        self,
        target: str | Path | BinaryIO,
        fps: Fraction | int | float,
        width: int,
        height: int,
        crf: int = 23,
        preset: str = "veryfast",
        gop_size: int | None = None,
        b_frames: bool = True,
    ):
        if width <= 0 or height <= 0:
            raise ValueError(f"bad video size {width}x{height}")
        fps = Fraction(fps).limit_denominator(1_000_000)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.width, self.height = width, height
        self._container = av.open(str(target) if isinstance(target, Path) else target, "w",
                                  format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width = width + width % 2
        self._stream.height = height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"preset": preset, "crf": str(crf)}
        self._stream.codec_context.gop_size = gop_size or max(1, round(fps))
        if not b_frames:
            self._stream.codec_context.max_b_frames = 0
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(height, width, 3)`` uint8 RGB frame."""
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected a ({self.height}, {self.width}, 3) uint8 frame, "
                f"got {frame.dtype} {frame.shape}"
            )
        if self.height % 2 or self.width % 2:
            frame = np.pad(frame, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self._container.mux(self._stream.encode(video_frame))
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file; safe to call twice."""
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode())
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
