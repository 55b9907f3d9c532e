"""`sam2_video_encoder`: the SAM 2 image encoder over frame ranges, a worker of `fal-ai/sam2/video`.

Each call decodes one frame range straight from the video (PyAV seek, no decode from frame 0) and
returns the per-frame backbone features the propagator injects into its inference state. It has
its own autoscaling, so ranges of one video are encoded on several replicas at once.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from deployments.model_settings import apply_thread_limit, resolve_device, sam2_build_kwargs
from models.sam2_video import FrameFeatures, encode_frames, load_sam2_video_predictor
from models.video_io import read_frames


class Sam2VideoEncoder:
    def __init__(self, model: dict, platform: dict | None = None):
        apply_thread_limit()
        self.predictor = load_sam2_video_predictor(model["checkpoint"], device=resolve_device(model.get("device")),
                                                   **sam2_build_kwargs(model))
        self.batch_size = int(model.get("encode_batch_size", 1))
        self._lock = threading.Lock()  # one encode at a time: torch already uses every thread we reserved

    async def encode_range(self, video: list[Any], start: int, stop: int) -> list[FrameFeatures]:
        """Features of frames [start, stop); `video` is `[ObjectRef of the video bytes]` or `[bytes]`."""
        data = video[0]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = await data
        return await asyncio.to_thread(self._encode, bytes(data), start, stop)

    def _encode(self, data: bytes, start: int, stop: int) -> list[FrameFeatures]:
        frames = read_frames(data, start, stop)
        with self._lock:
            return encode_frames(self.predictor, frames, batch_size=self.batch_size)
