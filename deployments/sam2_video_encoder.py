"""`sam2_video_encoder`: the frame-range worker of `fal-ai/sam2/video`, with its own autoscaling.

`encode_range` decodes one frame range straight from the video (PyAV seek, no decode from frame
0) and returns the per-frame backbone features the propagator injects into its inference state;
`render_range` renders one range of the output (mask video or overlay segment, box JPEGs) from
the finished masks. Ranges of one video are encoded, and rendered, on several replicas at once.
"""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction
from typing import Any

from deployments.model_settings import apply_thread_limit, resolve_device, sam2_build_kwargs
from models.sam2_video import FrameFeatures, encode_frames, load_sam2_video_predictor
from models.video_io import read_frames
from models.video_masks import FrameMasks
from models.video_render import RenderedRange, render_range


class Sam2VideoEncoder:
    def __init__(self, model: dict, platform: dict | None = None):
        apply_thread_limit()
        self.predictor = load_sam2_video_predictor(model["checkpoint"], device=resolve_device(model.get("device")),
                                                   **sam2_build_kwargs(model))
        self.batch_size = int(model.get("encode_batch_size", 1))
        self._lock = threading.Lock()  # one encode at a time: torch already uses every thread we reserved

    async def encode_range(self, video: list[Any], start: int, stop: int) -> list[FrameFeatures]:
        """Features of frames [start, stop); `video` is `[ObjectRef of the video bytes]` or `[bytes]`."""
        return await asyncio.to_thread(self._encode, await _video_bytes(video), start, stop)

    async def render_range(self, video: list[Any], start: int, stop: int, masks: dict, fps: list[int],
                           apply_mask: bool, with_boxes: bool) -> RenderedRange:
        """Output frames [start, stop) from their masks (`FrameMasks.to_json`); fps as [numerator, denominator]."""
        data = await _video_bytes(video) if apply_mask or with_boxes else None
        # No model lock: rendering does not touch the encoder, so it overlaps with encoding calls.
        return await asyncio.to_thread(render_range, data, start, stop, FrameMasks.from_json(masks),
                                       Fraction(*fps), apply_mask, with_boxes)

    def _encode(self, data: bytes, start: int, stop: int) -> list[FrameFeatures]:
        frames = read_frames(data, start, stop)
        with self._lock:
            return encode_frames(self.predictor, frames, batch_size=self.batch_size)


async def _video_bytes(video: list[Any]) -> bytes:
    data = video[0]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = await data
    return bytes(data)
