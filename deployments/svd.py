"""`fal-ai/svd`: Stable Video Diffusion image-to-video, with the motion brush and per-step progress.

Each denoising step logs "step k/N" (status logs and SSE) and checks for cancellation, so a cancel
takes effect at the next step. The seed is drawn when absent and always returned. Depth control
(`control_maps_data_url`: a zip or tar of one depth map per frame, read by `models.control_maps`
within limits) needs a temporal depth ControlNet configured (`model.controlnet`).
"""

from __future__ import annotations

import asyncio
import io
import secrets

import numpy as np

from deployments.base import ModelDeployment, RequestError, RunContext
from deployments.model_settings import resolve_device
from deployments.svd_schema import MAX_SEED, SvdInput
from models.control_maps import ControlMapsError, read_control_maps
from models.svd import Generation, SvdGenerator, load_svd_pipeline
from models.video_io import Mp4Writer
from serve.output_files import save_output


class Svd(ModelDeployment):
    input_model = SvdInput

    def setup(self, model: dict) -> None:
        device = resolve_device(model.get("device"))
        dtype = model.get("dtype", "float16") if device != "cpu" else "float32"
        pipe, controlled = load_svd_pipeline(model["checkpoint"], device=device, dtype=dtype,
                                             cpu_offload=bool(model.get("cpu_offload", False)),
                                             controlnet=model.get("controlnet"))
        self.generator = SvdGenerator(pipe, int(model.get("height", 576)), int(model.get("width", 1024)),
                                      model.get("decode_chunk_size"), controlled=controlled,
                                      control_scale=float(model.get("controlnet_scale", 1.0)))
        self.default_fps = int(model.get("fps", 7))
        self.max_frames = int(model.get("max_frames", self.generator.default_frames))
        self.max_archive_bytes = int(model.get("max_control_maps_bytes", 512 * 2**20))

    async def decode(self, request: SvdInput, ctx: RunContext) -> dict:
        if request.control_maps_data_url and self.generator.controlled is None:
            raise RequestError(["control_maps_data_url"], "depth control maps need a ControlNet, and this server "
                                                          "has none configured")
        frames = request.num_frames or self.generator.default_frames
        if frames > self.max_frames:
            raise RequestError(["num_frames"], f"{frames} frames is over this server's limit of {self.max_frames}")
        maps = None
        if request.control_maps_data_url:
            archive, _ = await self.read_input_file("control_maps_data_url", request.control_maps_data_url, ctx)
            maps = await asyncio.to_thread(self._control_maps, archive)
            if request.num_frames is not None and request.num_frames != len(maps):
                raise RequestError(["num_frames"], f"num_frames is {request.num_frames} but the archive has "
                                                   f"{len(maps)} control maps (one per frame); leave it out")
            frames = len(maps)
        data, _ = await self.read_input_file("image_url", request.image_url, ctx)
        image = self.decode_image_field("image_url", data)
        still = None
        if request.mask_image_url:
            mask_data, _ = await self.read_input_file("mask_image_url", request.mask_image_url, ctx)
            still = self.decode_image_field("mask_image_url", mask_data).mean(axis=2) > 127  # white stays still
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        ctx.log(f"{frames} frames at {self.generator.width}x{self.generator.height}, {request.steps} steps, seed {seed}"
                + (", motion brush" if still is not None else "") + (", depth control" if maps else ""))
        return {"image": image, "still": still, "maps": maps, "frames": frames, "seed": seed, "request": request}

    def _control_maps(self, archive: bytes) -> list[np.ndarray]:
        max_pixels = int(self.platform.settings.get("limits", {}).get("max_image_pixels", 40_000_000))
        try:
            return read_control_maps(archive, max_frames=self.max_frames, max_pixels=max_pixels,
                                     max_total_bytes=self.max_archive_bytes)
        except ControlMapsError as exc:
            raise RequestError(["control_maps_data_url"], str(exc)) from None

    def predict(self, inputs: dict, ctx: RunContext) -> Generation:
        request: SvdInput = inputs["request"]

        def on_step(done: int, total: int) -> None:
            ctx.log(f"step {done}/{total}")
            ctx.cancel.check()  # a cancel takes effect here, between steps

        return self.generator.generate(
            inputs["image"], seed=inputs["seed"], num_frames=inputs["frames"], steps=request.steps,
            fps=request.fps or self.default_fps, motion_bucket_id=request.motion_bucket_id, cond_aug=request.cond_aug,
            still_mask=inputs["still"], control_maps=inputs["maps"], on_step=on_step)

    async def encode(self, result: Generation, request: SvdInput, ctx: RunContext) -> dict:
        video = await asyncio.to_thread(self._mp4, result.frames, request.fps or self.default_fps)
        file = await save_output(self.platform.storage, video, "video/mp4", "video.mp4", ctx.job.base_url)
        return {"video": file, "seed": result.seed}

    @staticmethod
    def _mp4(frames: np.ndarray, fps: int) -> bytes:
        out = io.BytesIO()
        with Mp4Writer(out, fps, frames.shape[2], frames.shape[1]) as writer:
            for frame in frames:
                writer.write(frame)
        return out.getvalue()
