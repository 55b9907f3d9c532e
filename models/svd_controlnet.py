"""Temporal depth ControlNet for Stable Video Diffusion (``ControlNetSDVModel``), on diffusers' SVD blocks.

The released checkpoint (``CiaraRowles/temporal-controlnet-depth-svd-v1``, code
``CiaraStrawberry/svd-temporal-controlnet``) is the encoder half of the SVD UNet: ``conv_in``,
the time and micro-conditioning embeddings, the spatio-temporal down blocks and mid block, built
here from diffusers' own blocks so the parameter names are the stock ones. Depth frames pass a
small strided conv stack whose output is added to ``conv_in``'s; one 1x1 conv per skip tensor and
one on the mid block output give the residuals, scaled by ``conditioning_scale``, that
:func:`models.svd_controlnet_unet.unet_with_controlnet_residuals` injects into the frozen UNet.
The reference is svd-controlnet.md 2-4; ``tests/parity/svd_controlnet`` holds golden outputs of
the original code (``d042.``: on diffusers 0.42, whose temporal cross-attention context ordering
these blocks have).

Checkpoint folders (``config.json`` with ``_class_name: ControlNetSDVModel`` and
``diffusion_pytorch_model.safetensors``) load with :meth:`ControlNetSDVModel.from_pretrained`,
with strict key matching: diffusers itself only warns about missing keys (and leaves them on
the meta device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding, zero_module
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from diffusers.utils import BaseOutput
from torch import nn

from models.svd_controlnet_unet import frames_into_batch


class CheckpointKeysError(ValueError):
    """A checkpoint's tensor names differ from the module's."""


@dataclass
class ControlNetSDVOutput(BaseOutput):
    """Residuals, 4-D (B*F, C, h_k, w_k), batch-major: one per UNet skip tensor, and the mid one."""

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


def _per_block(value, n: int, name: str) -> list:
    if isinstance(value, int):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} down blocks")
    return list(value)


class ControlNetSDVModel(ModelMixin, ConfigMixin):
    """The SVD temporal ControlNet; the config keys are the released ``config.json``'s.

    ``up_block_types``, ``out_channels``, ``sample_size`` and ``num_frames`` are in the released
    config because it was cloned from the UNet's; nothing here uses them (the frame count comes
    from the input), but they are kept so ``save_pretrained`` writes the released layout.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | tuple[int, ...] = 2,
        cross_attention_dim: int | tuple[int, ...] = 1024,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 25,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ):
        super().__init__()
        n = len(down_block_types)
        # The original rejects these mismatches too (up_block_types only gets this check).
        if len(up_block_types) != n or len(block_out_channels) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        heads = _per_block(num_attention_heads, n, "num_attention_heads")
        cross_dims = _per_block(cross_attention_dim, n, "cross_attention_dim")
        layers = _per_block(layers_per_block, n, "layers_per_block")
        transformer_layers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")

        # The trunk: the same modules, arguments and names as UNetSpatioTemporalConditionModel's
        # encoder half, so UNet weights and the released checkpoint fit unchanged.
        c0 = block_out_channels[0]
        time_embed_dim = 4 * c0
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

        self.down_blocks = nn.ModuleList()
        # One zero conv per skip tensor, in the order the UNet collects them: conv_in's output,
        # then each block's resnet outputs and its downsampler output.
        self.controlnet_down_blocks = nn.ModuleList([_zero_conv(c0)])
        out_ch = c0
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            last = i == n - 1
            self.down_blocks.append(get_down_block(
                block_type,
                num_layers=layers[i],
                transformer_layers_per_block=transformer_layers[i],
                in_channels=in_ch,
                out_channels=out_ch,
                temb_channels=time_embed_dim,
                add_downsample=not last,
                resnet_eps=1e-5,
                cross_attention_dim=cross_dims[i],
                num_attention_heads=heads[i],
                resnet_act_fn="silu",
            ))
            self.controlnet_down_blocks.extend(_zero_conv(out_ch) for _ in range(layers[i] + (not last)))

        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1],
            temb_channels=time_embed_dim,
            transformer_layers_per_block=transformer_layers[-1],
            cross_attention_dim=cross_dims[-1],
            num_attention_heads=heads[-1],
        )
        self.controlnet_mid_block = _zero_conv(block_out_channels[-1])

        # diffusers' SD ControlNet embedding has the same layers and names (SiLU after every conv
        # but conv_out, three stride-2 convs for 4 widths: latent resolution). It takes 4-D input;
        # forward() folds frames into the batch first.
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=c0,
            conditioning_channels=conditioning_channels,
            block_out_channels=tuple(conditioning_embedding_out_channels),
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader (float32 parameters unless ``dtype`` says otherwise), keys strict.

        Raises :class:`CheckpointKeysError` naming the missing and unexpected tensors.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
        mismatched = info.get("mismatched_keys") or []
        if missing or unexpected or mismatched:
            raise CheckpointKeysError(
                f"{pretrained_model_name_or_path} does not match {cls.__name__}'s parameters: "
                f"missing {_short(missing)}, unexpected {_short(unexpected)}, "
                f"shape mismatch {_short([k for k, *_ in mismatched])}")
        return (model, info) if want_info else model

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        controlnet_cond: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
    ) -> ControlNetSDVOutput | tuple:
        """Residuals for the SVD UNet.

        ``sample`` (B, F, in_channels, h, w): scaled noisy latents concatenated with the image
        latents; ``timestep``: the continuous SVD timestep (0-d or 1-element tensor, or a number);
        ``encoder_hidden_states`` (B, 1, D); ``added_time_ids`` (B, 3); ``controlnet_cond``
        (B, F, conditioning_channels, 8h, 8w) in [-1, 1], or None to skip the conditioning.
        ``return_dict=False`` gives ``(list of down residuals, mid residual)``.
        """
        batch_size, num_frames = sample.shape[:2]
        sample, emb, encoder_hidden_states = frames_into_batch(self, sample, timestep, added_time_ids,
                                                               encoder_hidden_states)

        sample = self.conv_in(sample)
        if controlnet_cond is not None:
            if controlnet_cond.shape[:2] != (batch_size, num_frames):
                raise ValueError(f"controlnet_cond has shape {tuple(controlnet_cond.shape)}; expected "
                                 f"({batch_size}, {num_frames}, C, H, W) like the sample")
            # Batch-major like the sample: frame f of video b is row b*F + f.
            sample = sample + self.controlnet_cond_embedding(controlnet_cond.flatten(0, 1))

        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                    image_only_indicator=image_only_indicator)
            else:
                sample, res = block(hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator)
            skips += res
        sample = self.mid_block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                image_only_indicator=image_only_indicator)

        down = [conv(skip) * conditioning_scale for conv, skip in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(sample) * conditioning_scale
        if not return_dict:
            return down, mid
        return ControlNetSDVOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)


def _zero_conv(channels: int) -> nn.Conv2d:
    # Zero-initialised so a fresh ControlNet leaves the UNet unchanged (the ControlNet recipe).
    return zero_module(nn.Conv2d(channels, channels, kernel_size=1))


def _short(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more
