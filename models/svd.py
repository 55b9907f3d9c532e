"""Stable Video Diffusion image-to-video on diffusers' `StableVideoDiffusionPipeline`, with a motion brush.

`SvdGenerator.generate` calls the pipeline exactly as a plain `pipe(...)` call would (so, without a
mask, the frames equal it for the same arguments and seed) and adds, through
`callback_on_step_end`:
- progress (`on_step(k, n)`) and cooperative cancel (the callback may raise);
- the motion brush: where the still-mask is set, the conditioning image's latent, re-noised to the
  current noise level, replaces the latents after every step. After the last step the noise level
  is 0, so the still region's final latents equal the conditioning image's latent exactly.

With per-frame depth maps it runs the temporal depth ControlNet pipeline
(`models.svd_controlnet_pipeline`), which shares every component with the plain one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from models.image_io import check_rgb_image

StepCallback = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class Generation:
    frames: np.ndarray  # (F, H, W, 3) uint8
    latents: torch.Tensor  # (F, 4, h, w), the final latents (before decoding)
    seed: int


def load_svd_pipeline(directory: str | Path, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
                      cpu_offload: bool = False, controlnet: str | Path | None = None):
    """(plain pipeline, depth ControlNet pipeline or None) from local folders (SVD or SVD-XT layout).

    The ControlNet pipeline is built on the plain one's components: one copy of the weights.
    """
    from diffusers import StableVideoDiffusionPipeline

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    pipe = StableVideoDiffusionPipeline.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
    controlled = None
    if controlnet is not None:
        from models.svd_controlnet import ControlNetSDVModel
        from models.svd_controlnet_pipeline import StableVideoDiffusionControlNetPipeline

        net = ControlNetSDVModel.from_pretrained(str(controlnet), dtype=dtype, local_files_only=True)
        controlled = StableVideoDiffusionControlNetPipeline(**pipe.components, controlnet=net)
    for p in (pipe, controlled):
        if p is None:
            continue
        if cpu_offload and device != "cpu":
            p.enable_model_cpu_offload()  # each component on the GPU only while it runs
        else:
            p.to(device)
        p.set_progress_bar_config(disable=True)
    return pipe, controlled


class SvdGenerator:
    def __init__(self, pipe, height: int, width: int, decode_chunk_size: int | None = None, controlled=None,
                 control_scale: float = 1.0):
        self.pipe = pipe
        self.controlled = controlled
        self.control_scale = float(control_scale)
        self.height, self.width = int(height), int(width)
        # Fixed per deployment: the temporal VAE decoder mixes frames within a chunk, so the chunk size
        # changes pixels (models.md 5.4) and must not vary between calls.
        self.decode_chunk_size = decode_chunk_size
        self.default_frames = int(pipe.unet.config.num_frames)
        self.vae_scale = int(pipe.vae_scale_factor)

    def generate(self, image: np.ndarray, *, seed: int, num_frames: int | None = None, steps: int = 20,
                 fps: int = 7, motion_bucket_id: int = 127, cond_aug: float = 0.02,
                 still_mask: np.ndarray | None = None, control_maps: list[np.ndarray] | None = None,
                 on_step: StepCallback | None = None) -> Generation:
        """`still_mask`: (H, W) bool at any size, True = keep still; `control_maps`: one depth map per frame
        ((H, W, 3) uint8, any size: resized to the output), which also sets the frame count."""
        image = check_rgb_image(image)
        picture = Image.fromarray(image)
        frames = num_frames or self.default_frames
        pipe, extra = self.pipe, {}
        if control_maps is not None:
            if self.controlled is None:
                raise ValueError("depth control needs a ControlNet (load_svd_pipeline(controlnet=...))")
            frames = len(control_maps)
            # fps, motion_bucket_id and cond_aug are honoured: the released pipeline fixed its added time ids
            # to (6, 128, 0.02) whatever the call said, which would silently ignore those inputs.
            pipe, extra = self.controlled, {
                "controlnet_condition": [Image.fromarray(check_rgb_image(m)) for m in control_maps],
                "controlnet_cond_scale": self.control_scale, "fixed_added_time_ids": None}
        brush = self._motion_brush(picture, still_mask, seed) if still_mask is not None else None
        final: dict[str, torch.Tensor] = {}

        def callback(pipe, step: int, timestep, tensors: dict) -> dict:
            out = {}
            if brush is not None:
                out["latents"] = brush(pipe, tensors["latents"])
            final["latents"] = out.get("latents", tensors["latents"])
            if on_step is not None:
                on_step(step + 1, steps)
            return out

        result = pipe(
            picture, height=self.height, width=self.width, num_frames=frames, num_inference_steps=steps,
            fps=fps, motion_bucket_id=motion_bucket_id, noise_aug_strength=cond_aug,
            decode_chunk_size=self.decode_chunk_size, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np", callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"],
            **extra)
        video = np.clip(np.rint(np.asarray(result.frames[0]) * 255), 0, 255).astype(np.uint8)
        return Generation(frames=video, latents=final["latents"][0].detach().float().cpu(), seed=seed)

    def still_latent(self, picture: Image.Image) -> torch.Tensor:
        """The conditioning image's latent, scaled like the denoising latents: (1, 1, 4, h, w)."""
        pipe = self.pipe
        with torch.no_grad():
            pixels = pipe.video_processor.preprocess(picture, height=self.height, width=self.width)
            pixels = pixels.to(pipe.vae.device, pipe.vae.dtype)
            latent = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
        return latent[:, None]

    def latent_mask(self, still_mask: np.ndarray) -> torch.Tensor:
        """(1, 1, 1, h, w) of 0/1: a latent cell is still when most of its pixels are (area average > 0.5)."""
        mask = np.asarray(still_mask)
        if mask.ndim != 2:
            raise ValueError(f"the still mask must be 2-D, got shape {mask.shape}")
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((self.width, self.height), Image.NEAREST)
        h, w = self.height // self.vae_scale, self.width // self.vae_scale
        cells = np.asarray(resized.resize((w, h), Image.BOX), dtype=np.float32) / 255.0
        return torch.from_numpy((cells > 0.5).astype(np.float32))[None, None, None]

    def _motion_brush(self, picture: Image.Image, still_mask: np.ndarray, seed: int):
        z0 = self.still_latent(picture)
        mask = self.latent_mask(still_mask).to(z0.device, z0.dtype)
        # One noise draw for every step, from its own generator: the pipeline's own draws stay as they are.
        noise = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(seed + 1)).to(z0.device, z0.dtype)

        def blend(pipe, latents: torch.Tensor) -> torch.Tensor:
            # After scheduler.step, step_index points at the noise level of the latents we receive.
            sigma = pipe.scheduler.sigmas[pipe.scheduler.step_index].to(latents.device, latents.dtype)
            still = (z0 + sigma * noise).to(latents.dtype)
            return mask * still + (1 - mask) * latents

        return blend
