"""Rendering a video job's outputs by frame ranges, and joining the ranges into one mp4.

Each range becomes its own H.264 mp4 segment (mask video or overlay, one colour per object) plus,
when asked, box-overlay JPEGs, so ranges can be rendered on several replicas at once. Segments
start with a keyframe, have no B-frames (decode order = display order, so every segment's
timestamps line up the same way) and come from identical encoder settings, so joining them is a
remux: packets are copied with shifted timestamps, nothing is decoded or encoded again.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import av

from models.video_io import Mp4Writer, VideoSource, iter_frames
from models.video_masks import FrameMasks, draw_boxes, encode_jpeg, render_frame


class SegmentMismatch(ValueError):
    """Segments encoded with different settings cannot be joined by copying packets."""


@dataclass
class RenderedRange:
    start: int
    stop: int
    video: bytes  # H.264 mp4 of frames [start, stop)
    box_frames: list[tuple[int, bytes]] = field(default_factory=list)  # (frame index, JPEG)


def render_range(source: VideoSource | None, start: int, stop: int, masks: FrameMasks, fps: Fraction,
                 apply_mask: bool, with_boxes: bool,
                 check_cancel: Callable[[], None] | None = None) -> RenderedRange:
    """Frames [start, stop) of the output; `source` (the input video) is needed for overlays and boxes."""
    height, width = masks.height, masks.width
    need_frames = apply_mask or with_boxes
    if need_frames and source is None:
        raise ValueError("overlays and box frames need the source video")
    frames = iter_frames(source, start, stop) if need_frames else ((i, None) for i in range(start, stop))
    out = io.BytesIO()
    boxes: list[tuple[int, bytes]] = []
    with Mp4Writer(out, fps, width, height, b_frames=False) as writer:
        for idx, frame in frames:
            if check_cancel is not None and (idx - start) % 32 == 0:
                check_cancel()
            objects = masks.get(idx)
            writer.write(render_frame(frame, objects, height, width, apply_mask))
            if with_boxes:
                boxes.append((idx, encode_jpeg(draw_boxes(frame, objects))))
    if writer.frames_written != stop - start:
        raise ValueError(f"the video ended at frame {start + writer.frames_written}, before {stop}")
    return RenderedRange(start, stop, out.getvalue(), boxes)


def join_segments(segments: Sequence[bytes]) -> bytes:
    """One mp4 from segments in order, by copying their packets (no re-encoding)."""
    if not segments:
        raise ValueError("nothing to join")
    if len(segments) == 1:
        return segments[0]
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as target:
        stream = None
        extradata = None
        offset = 0  # in the segments' time base: where the current segment starts
        for number, data in enumerate(segments):
            with av.open(io.BytesIO(data)) as source:
                src = source.streams.video[0]
                if stream is None:
                    stream = target.add_stream_from_template(src)
                    extradata = src.codec_context.extradata
                    time_base = src.time_base
                elif src.codec_context.extradata != extradata or src.time_base != time_base:
                    raise SegmentMismatch(f"segment {number} was encoded with other settings")
                frame_ticks = round(1 / (src.average_rate * src.time_base))
                count = 0
                for packet in source.demux(src):
                    if packet.dts is None:  # the demuxer's final empty packet
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = stream
                    target.mux(packet)
                    count += 1
                offset += count * frame_ticks
    return out.getvalue()
