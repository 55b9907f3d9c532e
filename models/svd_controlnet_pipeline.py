"""Depth-controlled SVD image-to-video: diffusers' ``StableVideoDiffusionPipeline`` plus the temporal ControlNet.

:class:`StableVideoDiffusionControlNetPipeline` reproduces the released inference pipeline of
``CiaraStrawberry/svd-temporal-controlnet`` (svd-controlnet.md 6-7) on stock diffusers pieces.
It differs from stock SVD in these ways, each kept on purpose because the checkpoint was
trained and released with it, and each an explicit argument:

* the CLIP input is *not* mean/std normalised (``normalize_clip_input=False``);
* the added time ids fed to the UNet and the ControlNet are always
  :data:`RELEASED_ADDED_TIME_IDS` (6, 128, 0.02), whatever ``fps``, ``motion_bucket_id`` and
  ``noise_aug_strength`` say (``fixed_added_time_ids``; ``None`` derives them like stock SVD).
  ``noise_aug_strength`` still scales the conditioning image's augmentation noise;
* one depth frame per video frame, scaled to [-1, 1] like a VAE input and given unchanged to
  both classifier-free-guidance halves; the UNet takes the residuals with the repeated-add
  injection (:mod:`models.svd_controlnet_unet`).

Everything else (VAE conditioning latent, guidance ramp, scheduler, the generator drawn first for
the augmentation noise and then for the initial latents, decoding) is the stock pipeline's.
Per-step latents are observable through ``callback_on_step_end`` as in stock diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import PIL.Image
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    StableVideoDiffusionPipelineOutput,
    _append_dims,
    _resize_with_antialiasing,
    retrieve_timesteps,
)
from diffusers.utils.torch_utils import randn_tensor

from models.svd_controlnet import ControlNetSDVModel
from models.svd_controlnet_unet import unet_with_controlnet_residuals

# (fps - 1, motion_bucket_id, noise_aug_strength) as the released pipeline hard-codes them:
# it computes the ids from its arguments and then overwrites them with these.
RELEASED_ADDED_TIME_IDS: tuple[float, float, float] = (6.0, 128.0, 0.02)
CLIP_INPUT_SIZE = (224, 224)


def load_svd_controlnet_pipeline(
    svd_dir: str | Path,
    controlnet_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> StableVideoDiffusionControlNetPipeline:
    """The pipeline from a stock SVD folder (``save_pretrained`` layout) and a ControlNet folder."""
    base = StableVideoDiffusionPipeline.from_pretrained(str(svd_dir), dtype=dtype, local_files_only=True)
    controlnet = ControlNetSDVModel.from_pretrained(str(controlnet_dir), dtype=dtype, local_files_only=True)
    pipe = StableVideoDiffusionControlNetPipeline(**base.components, controlnet=controlnet)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class StableVideoDiffusionControlNetPipeline(StableVideoDiffusionPipeline):
    """SVD img2vid with per-frame depth control; see the module docstring for the deviations from stock."""

    model_cpu_offload_seq = "image_encoder->controlnet->unet->vae"

    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor, controlnet: ControlNetSDVModel):
        super().__init__(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                         feature_extractor=feature_extractor)
        self.register_modules(controlnet=controlnet)

    def encode_clip_image(self, image, device, num_videos_per_prompt: int, do_classifier_free_guidance: bool,
                          normalize: bool) -> torch.Tensor:
        """(B, 1, D) CLIP image embeddings; with CFG, zeros first: (2B, 1, D).

        The image, in [0, 1], is always resized to 224x224 with the antialiased resize (tensors
        too, unlike stock). Resizing [0, 1] directly instead of stock's [-1, 1] round trip is the
        original's order; both blur and bicubic weights sum to 1, so they agree up to rounding.
        """
        if isinstance(image, torch.Tensor):
            pixels = image[None] if image.ndim == 3 else image
        else:
            pixels = self.video_processor.numpy_to_pt(self.video_processor.pil_to_numpy(image))
        pixels = _resize_with_antialiasing(pixels, CLIP_INPUT_SIZE)
        if normalize:
            pixels = self.feature_extractor(images=pixels, do_normalize=True, do_center_crop=False,
                                            do_resize=False, do_rescale=False, return_tensors="pt").pixel_values
        dtype = next(self.image_encoder.parameters()).dtype
        embeddings = self.image_encoder(pixels.to(device=device, dtype=dtype)).image_embeds.unsqueeze(1)
        embeddings = embeddings.repeat_interleave(num_videos_per_prompt, dim=0)
        if do_classifier_free_guidance:
            embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
        return embeddings

    def prepare_depth(self, controlnet_condition, height: int, width: int, num_frames: int, batch: int,
                      do_classifier_free_guidance: bool, device, dtype) -> torch.Tensor:
        """(batch or 2*batch, F, 3, H, W) depth in [-1, 1]: the same frames for every video and CFG half."""
        if len(controlnet_condition) != num_frames:
            raise ValueError(f"{len(controlnet_condition)} depth frames for {num_frames} video frames")
        # The checkpoint was trained on grey depth as 3 equal RGB channels; 8-bit greyscale
        # images are expanded here (16-bit depth must be brought to 8 bits by the caller).
        frames = [f.convert("RGB") if isinstance(f, PIL.Image.Image) and f.mode == "L" else f
                  for f in controlnet_condition]
        if isinstance(controlnet_condition, torch.Tensor):
            frames = controlnet_condition
        # VAE-style preprocessing: resize to (height, width) if needed, then x/255*2-1.
        depth = self.video_processor.preprocess(frames, height=height, width=width)
        depth = depth.to(device=device, dtype=dtype).unsqueeze(0).repeat(batch, 1, 1, 1, 1)
        if do_classifier_free_guidance:
            depth = torch.cat([depth, depth])
        return depth

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | torch.Tensor,
        controlnet_condition: Sequence[PIL.Image.Image] | torch.Tensor,
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
        sigmas: list[float] | None = None,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        return_dict: bool = True,
        controlnet_cond_scale: float = 1.0,
        fixed_added_time_ids: Sequence[float] | None = RELEASED_ADDED_TIME_IDS,
        normalize_clip_input: bool = False,
    ):
        """Generate frames from one image and ``num_frames`` depth frames (RGB, near/far as trained).

        The arguments are stock SVD's plus ``controlnet_condition`` (a list of PIL images, or an
        (F, 3, H, W) tensor in [0, 1]), ``controlnet_cond_scale`` (the ControlNet's
        ``conditioning_scale``: multiplies every residual), ``fixed_added_time_ids`` and
        ``normalize_clip_input`` (defaults: the released behaviour, see the module docstring).
        With the defaults ``fps`` and ``motion_bucket_id`` do not condition anything.
        Unlike the original, ``max_guidance_scale <= 1`` (no CFG) works.
        """
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        num_frames = num_frames if num_frames is not None else self.unet.config.num_frames
        decode_chunk_size = decode_chunk_size if decode_chunk_size is not None else num_frames
        self.check_inputs(image, height, width)
        if isinstance(image, list) or (isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] != 1):
            raise ValueError("one conditioning image per call (the depth frames belong to it)")
        if any(k not in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}")

        device = self._execution_device
        batch = num_videos_per_prompt
        self._guidance_scale = max_guidance_scale
        cfg = self.do_classifier_free_guidance

        image_embeddings = self.encode_clip_image(image, device, num_videos_per_prompt, cfg, normalize_clip_input)
        dtype = image_embeddings.dtype

        # The VAE conditioning latent, as stock: first draw of the generator.
        pixels = self.video_processor.preprocess(image, height=height, width=width).to(device)
        noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
        pixels = pixels + noise_aug_strength * noise
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.vae.to(dtype=torch.float32)
        image_latents = self._encode_vae_image(pixels, device, num_videos_per_prompt, cfg).to(dtype)
        if needs_upcasting:
            self.vae.to(dtype=torch.float16)
        image_latents = image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)

        if fixed_added_time_ids is None:
            # Stock SVD: the UNet was micro-conditioned on fps - 1.
            added_time_ids = self._get_add_time_ids(fps - 1, motion_bucket_id, noise_aug_strength, dtype,
                                                    1, num_videos_per_prompt, cfg)
        else:
            ids = [float(v) for v in fixed_added_time_ids]
            if len(ids) != 3:
                raise ValueError("fixed_added_time_ids holds (fps - 1, motion_bucket_id, noise_aug_strength)")
            added_time_ids = torch.tensor([ids], dtype=dtype).repeat(image_latents.shape[0], 1)
        added_time_ids = added_time_ids.to(device)

        depth = self.prepare_depth(controlnet_condition, height, width, num_frames, batch, cfg, device,
                                   self.controlnet.dtype)

        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, None, sigmas)
        # Second draw of the generator.
        latents = self.prepare_latents(batch, num_frames, self.unet.config.in_channels, height, width, dtype,
                                       device, generator, latents)

        guidance_scale = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames).unsqueeze(0)
        guidance_scale = guidance_scale.to(device, latents.dtype).repeat(batch, 1)
        self._guidance_scale = _append_dims(guidance_scale, latents.ndim)
        self._num_timesteps = len(timesteps)

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input, image_latents], dim=2)

                # The ControlNet runs on the whole CFG batch: the unconditional half sees zero image
                # embeddings and latents but the same depth.
                down, mid = self.controlnet(
                    model_input, t, encoder_hidden_states=image_embeddings, added_time_ids=added_time_ids,
                    controlnet_cond=depth, conditioning_scale=controlnet_cond_scale, return_dict=False)
                noise_pred = unet_with_controlnet_residuals(
                    self.unet, model_input, t, image_embeddings, added_time_ids, down, mid)

                if cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + self.guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents).prev_sample

                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    tensors = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, tensors)
                    latents = outputs.pop("latents", latents)
                progress_bar.update()

        if output_type == "latent":
            frames = latents
        else:
            frames = self.decode_latents(latents, num_frames, decode_chunk_size)
            frames = self.video_processor.postprocess_video(video=frames, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return frames
        return StableVideoDiffusionPipelineOutput(frames=frames)
