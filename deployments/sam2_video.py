"""`fal-ai/sam2/video`: SAM 2.1 video segmentation, chunked over encoder replicas by frame ranges.

This deployment is the propagator (DESIGN.md, "SAM 2 video"): it has the frame ranges encoded on
the `sam2_video_encoder` worker deployment (in parallel, a bounded window ahead), injects the
features into the SAM 2 video predictor's state, propagates forward and then backward, streams
per-frame results, and checkpoints its tracking state to storage at each range boundary, so a job
re-dispatched after its replica died resumes from the last finished range. The outputs (mask
video or overlay, bounding-box zip) are then rendered by frame ranges on the encoder workers in
parallel and joined without re-encoding; the RLE JSON is written from the masks.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from deployments.base import ModelDeployment, RequestError, RunContext
from deployments.model_settings import resolve_device, sam2_build_kwargs
from deployments.range_checkpoint import RangeCheckpoint, input_fingerprint
from deployments.video_limits import VideoLimits
from deployments.range_features import LocalCall, encoder_worker_name, remote_encoder
from deployments.range_tracking import track_ranges
from deployments.sam2_video_schema import Sam2VideoInput, object_prompts
from models.image_io import ImageDecodeError, decode_image
from models.sam2_video import Sam2VideoPropagator, encode_frames, load_sam2_video_predictor
from models.video_io import VideoInfo, read_frames
from models.video_masks import BoxFramesZip, FrameMasks
from models.video_render import RenderedRange, SegmentMismatch, join_segments, render_range
from serve import job_events
from serve.output_files import save_output

logger = logging.getLogger("visus.sam2_video")


@dataclass
class VideoJob:
    data: bytes
    info: VideoInfo
    prompts: list
    fingerprint: str
    shared: list | None = None  # [ObjectRef of data]: one copy in the object store for every worker call

    def shared_video(self) -> list:
        if self.shared is None:
            import ray

            self.shared = [ray.put(self.data)]
        return self.shared


def _fingerprint(data: bytes, request: Sam2VideoInput, mask: np.ndarray | None) -> str:
    # The mask file's URL may change between dispatches (a signed URL): its pixels identify it.
    extra = np.packbits(mask).tobytes() if mask is not None else b""
    return input_fingerprint(data, request, exclude={"mask_url"}, extra=extra)


class Sam2Video(ModelDeployment):
    input_model = Sam2VideoInput

    def setup(self, model: dict) -> None:
        self.predictor = load_sam2_video_predictor(model["checkpoint"], device=resolve_device(model.get("device")),
                                                   **sam2_build_kwargs(model))
        self.chunk_size = int(model.get("chunk_size", 16))
        self.prefetch = int(model.get("prefetch", 2))
        self.encoder_name = encoder_worker_name(model, self.workers)
        self.limits = VideoLimits.from_settings(model)

    # ---- decode: read and check the inputs -------------------------------------------------
    async def decode(self, request: Sam2VideoInput, ctx: RunContext) -> VideoJob:
        data, _ = await self.read_input_file("video_url", request.video_url, ctx)
        info = await self.limits.probe(data, "video_url")
        mask = None
        if request.mask_url:
            mask_data, _ = await self.read_input_file("mask_url", request.mask_url, ctx)
            mask = await asyncio.to_thread(self._initial_mask, mask_data, info)
        prompts = object_prompts(request, info.num_frames, info.height, info.width, mask)
        fingerprint = await asyncio.to_thread(_fingerprint, data, request, mask)  # hashing a long video takes a while
        ctx.log(f"video: {info.num_frames} frames, {info.width}x{info.height} at {float(info.fps):.3g} fps; "
                f"{len({p.obj_id for p in prompts})} object(s)")
        ctx.scratch["loop"] = asyncio.get_running_loop()  # predict() runs in a thread; handles live on this loop
        ctx.scratch["job"] = job = VideoJob(data, info, prompts, fingerprint)
        return job

    def _initial_mask(self, data: bytes, info: VideoInfo) -> np.ndarray:
        try:
            image = decode_image(data, max_pixels=self.limits.max_pixels)
        except ImageDecodeError as exc:
            raise RequestError(["mask_url"], str(exc)) from None
        gray = PILImage.fromarray(image).convert("L")
        if gray.size != (info.width, info.height):
            gray = gray.resize((info.width, info.height), PILImage.NEAREST)
        mask = np.asarray(gray) > 127
        if not mask.any():
            raise RequestError(["mask_url"], "the mask is empty (no pixel above 50% grey)")
        return mask

    # ---- predict: encode ranges on the workers, propagate, checkpoint ----------------------
    def predict(self, job: VideoJob, ctx: RunContext) -> FrameMasks:
        info = job.info
        checkpoint = self._checkpoint(job, ctx)
        saved = checkpoint.load()
        encode = self._encoder(job, ctx.scratch["loop"])
        masks = FrameMasks(info.height, info.width)
        if saved is not None:
            state, ranges = saved
            prop = Sam2VideoPropagator.from_state(self.predictor, state)
            for range_masks in ranges:
                masks.add_json(range_masks)
            ctx.log(f"resuming from the checkpoint after range {prop.next_step}/{len(prop.steps)}")
        known = {}
        if saved is None:
            prop = Sam2VideoPropagator(self.predictor, info.num_frames, info.height, info.width, job.prompts,
                                       self.chunk_size)
            calls = {f: encode(f, f + 1) for f in prop.prompt_frames}
            known = {f: call.result()[0] for f, call in calls.items()}
            prop.prepare(known)

        def on_result(result) -> None:
            masks.add(result.frame_idx, result.obj_ids, result.masks())
            ctx.emit(job_events.data(self._frame_event(result.frame_idx, result.obj_ids, masks)))

        track_ranges(prop, encode, self.prefetch, checkpoint, masks, ctx, on_result,
                     lambda p: p.export_state(), known)
        return masks

    @staticmethod
    def _frame_event(frame_idx: int, obj_ids: list[int], masks: FrameMasks) -> dict:
        rles, boxes = masks.rles(frame_idx), masks.boxes(frame_idx)
        return {"frame_index": frame_idx, "object_ids": list(obj_ids),
                "boxes": [boxes[o] for o in obj_ids], "masks": [rles[o] for o in obj_ids]}

    def _encoder(self, job: VideoJob, loop: asyncio.AbstractEventLoop):
        """(start, stop) -> pending features: on the encoder workers, or in this process when none."""
        if not self.encoder_name:
            return lambda start, stop: LocalCall(encode_frames(self.predictor, read_frames(job.data, start, stop)))
        return remote_encoder(self.workers[self.encoder_name], job.shared_video(), loop)

    def _checkpoint(self, job: VideoJob, ctx: RunContext) -> RangeCheckpoint:
        return RangeCheckpoint(self.platform.storage, ctx.job.request_id, job.fingerprint)

    # ---- encode: render the outputs --------------------------------------------------------
    async def encode(self, masks: FrameMasks, request: Sam2VideoInput, ctx: RunContext) -> dict:
        job: VideoJob = ctx.scratch["job"]
        started = time.perf_counter()
        rendered, where = await self._render(job, masks, request, ctx)
        video = await asyncio.to_thread(self._join, job, masks, request, rendered, ctx)
        ctx.log(f"rendered {job.info.num_frames} frames in {time.perf_counter() - started:.2f} s ({where})")
        storage, base = self.platform.storage, ctx.job.base_url
        out: dict[str, Any] = {"video": await save_output(storage, video, "video/mp4", "masks.mp4", base)}
        if request.boundingbox_zip:
            boxes = await asyncio.to_thread(self._box_zip, rendered)
            out["boundingbox_frames_zip"] = await save_output(storage, boxes, "application/zip", "boxes.zip", base)
        if request.return_masks_rle:
            rle = json.dumps(masks.to_json()).encode()
            out["masks_rle"] = await save_output(storage, rle, "application/json", "masks_rle.json", base)
        await asyncio.to_thread(self._checkpoint(job, ctx).clear, ctx.scratch["ranges"])
        return out

    async def _render(self, job: VideoJob, masks: FrameMasks, request: Sam2VideoInput,
                      ctx: RunContext) -> tuple[list[RenderedRange], str]:
        """The output by frame ranges, in parallel on the encoder workers (or in one piece here)."""
        n, fps = job.info.num_frames, job.info.fps
        ranges = [(start, min(start + self.chunk_size, n)) for start in range(0, n, self.chunk_size)]
        if not self.encoder_name or len(ranges) == 1:
            return [await asyncio.to_thread(self._render_here, job, masks, request, ctx)], "in one piece"
        video = job.shared_video() if request.apply_mask or request.boundingbox_zip else [b""]
        worker = self.workers[self.encoder_name].options(_by_reference=True)
        calls = [worker.render_range.remote(video, start, stop, masks.to_json(range(start, stop)),
                                            [fps.numerator, fps.denominator], request.apply_mask,
                                            request.boundingbox_zip) for start, stop in ranges]
        return list(await asyncio.gather(*calls)), f"{len(ranges)} ranges on the encoder workers"

    def _render_here(self, job: VideoJob, masks: FrameMasks, request: Sam2VideoInput, ctx: RunContext) -> RenderedRange:
        return render_range(job.data, 0, job.info.num_frames, masks, job.info.fps, request.apply_mask,
                            request.boundingbox_zip, ctx.cancel.check)

    def _join(self, job: VideoJob, masks: FrameMasks, request: Sam2VideoInput, rendered: list[RenderedRange],
              ctx: RunContext) -> bytes:
        try:
            return join_segments([r.video for r in rendered])
        except SegmentMismatch:
            # Workers with another libx264 build encode differently; one piece here is always joinable.
            logger.warning("video segments from the workers differ; rendering request %s here", ctx.job.request_id)
            return self._render_here(job, masks, request, ctx).video

    @staticmethod
    def _box_zip(rendered: list[RenderedRange]) -> bytes:
        out = io.BytesIO()
        with BoxFramesZip(out) as archive:
            for part in rendered:
                for frame_idx, jpeg in part.box_frames:
                    archive.add_jpeg(frame_idx, jpeg)
        return out.getvalue()
