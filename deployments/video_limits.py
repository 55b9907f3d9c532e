"""The input-video limits a video endpoint's model settings set, and the probe that enforces them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from deployments.base import RequestError
from models.video_io import VideoDecodeError, VideoInfo, probe_video


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int = 10_000
    max_pixels: int = 3840 * 2160
    max_duration_s: float = 3600.0

    @classmethod
    def from_settings(cls, model: dict) -> "VideoLimits":
        return cls(int(model.get("max_frames", cls.max_frames)), int(model.get("max_pixels", cls.max_pixels)),
                   float(model.get("max_duration_s", cls.max_duration_s)))

    async def probe(self, data: bytes, field: str) -> VideoInfo:
        """The video's shape; unreadable is a 422 and over a limit a 413, both naming `field`."""
        try:
            info = await asyncio.to_thread(probe_video, data)
        except VideoDecodeError as exc:
            raise RequestError([field], str(exc)) from None
        if info.width * info.height > self.max_pixels:
            raise RequestError([field], f"{info.width}x{info.height} video is over the {self.max_pixels}-pixel limit",
                               413)
        if info.num_frames > self.max_frames:
            raise RequestError([field], f"{info.num_frames} frames is over the {self.max_frames}-frame limit", 413)
        if info.duration > self.max_duration_s:
            raise RequestError([field], f"{info.duration:.1f} s is over the {self.max_duration_s:g} s limit", 413)
        return info
