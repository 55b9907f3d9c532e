"""`sam2_video_encoder`: the frame-range worker of `fal-ai/sam2/video` (and of `fal-ai/sa2va/*/video`,
configured with a Sa2VA checkpoint), with its own autoscaling.

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
from models.video_io import read_frames, read_frames_at
from models.video_masks import FrameMasks
from models.video_render import RenderedRange, render_range


class Sam2VideoEncoder:
    """Settings: `checkpoint` (a SAM 2.1 .pt) or `sa2va_checkpoint` (a Sa2VA directory, whose grounding
    SAM 2.0 is encoded with Sa2VA's input normalisation), `device`, `dtype` (autocast on GPUs for Sa2VA)."""

    def __init__(self, model: dict, platform: dict | None = None):
        apply_thread_limit()
        device = resolve_device(model.get("device"))
        self.normalisation = None
        self.autocast = None
        if model.get("sa2va_checkpoint"):
            from models.sa2va import load_grounding_predictor
            from models.sa2va_inputs import SAM_NORMALISATION

            self.predictor = load_grounding_predictor(model["sa2va_checkpoint"], device=device)
            self.normalisation = SAM_NORMALISATION
            if device != "cpu" and model.get("dtype", "bfloat16") != "float32":
                import torch

                self.autocast = getattr(torch, model.get("dtype", "bfloat16"))
        else:
            self.predictor = load_sam2_video_predictor(model["checkpoint"], device=device, **sam2_build_kwargs(model))
        self.batch_size = int(model.get("encode_batch_size", 1))
        self._lock = threading.Lock()  # one encode at a time: torch already uses every thread we reserved

    async def encode_range(self, video: list[Any], start: int, stop: int,
                           frame_indices: list[int] | None = None) -> list[FrameFeatures]:
        """Features of frames [start, stop); `video` is `[ObjectRef of the video bytes]` or `[bytes]`.

        With `frame_indices` (ascending source frames, one per position of the range) those frames
        are encoded instead: the caller works on a sampled video.
        """
        return await asyncio.to_thread(self._encode, await _video_bytes(video), start, stop, frame_indices)

    async def render_range(self, video: list[Any], start: int, stop: int, masks: dict, fps: list[int],
                           apply_mask: bool, with_boxes: bool) -> RenderedRange:
        """Output frames [start, stop) from their masks (`FrameMasks.to_json`); fps as [numerator, denominator]."""
        data = await _video_bytes(video) if apply_mask or with_boxes else None
        # No model lock: rendering does not touch the encoder, so it overlaps with encoding calls.
        return await asyncio.to_thread(render_range, data, start, stop, FrameMasks.from_json(masks),
                                       Fraction(*fps), apply_mask, with_boxes)

    def _encode(self, data: bytes, start: int, stop: int, frame_indices: list[int] | None) -> list[FrameFeatures]:
        if frame_indices is not None and len(frame_indices) != stop - start:
            raise ValueError(f"{len(frame_indices)} frame indices for the range [{start}, {stop})")
        frames = read_frames(data, start, stop) if frame_indices is None else read_frames_at(data, frame_indices)
        with self._lock:
            return encode_frames(self.predictor, frames, batch_size=self.batch_size, autocast_dtype=self.autocast,
                                 normalisation=self.normalisation)


async def _video_bytes(video: list[Any]) -> bytes:
    data = video[0]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = await data
    return bytes(data)
