"""The SVD UNet with temporal-ControlNet residuals injected, on diffusers' stock UNet.

diffusers' ``UNetSpatioTemporalConditionModel.forward`` has no residual arguments, so
:func:`unet_with_controlnet_residuals` re-runs its forward on the stock modules (a plain SVD
folder loads unchanged) and adds the residuals the way the released temporal ControlNet's own UNet
did (svd-controlnet.md 5): after *every* down block, each skip tensor collected so far gets its
residual added again, so early skips receive theirs once per remaining down block
(:func:`skip_add_counts`). The checkpoint was trained with this quirk; a single add changes the
tiny parity model's frames by about 0.5. The mid residual is added once.

:func:`svd_time_embedding` is the stock time + micro-conditioning embedding, shared with the
ControlNet (:mod:`models.svd_controlnet`), which has the same four embedding modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device


def svd_time_embedding(model, sample: torch.Tensor, timestep, added_time_ids: torch.Tensor) -> torch.Tensor:
    """(B, 4*C0) embedding of the timestep plus the added time ids, as the stock SVD UNet computes it.

    ``model`` has ``time_proj``, ``time_embedding``, ``add_time_proj`` and ``add_embedding``;
    ``sample`` is (B, F, C, h, w) and only gives batch size, dtype and device.
    """
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        dtype = maybe_adjust_dtype_for_device(dtype, sample.device)
        timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
    elif timesteps.ndim == 0:
        timesteps = timesteps[None].to(sample.device)
    batch_size = sample.shape[0]
    timesteps = timesteps.expand(batch_size)

    # Timesteps has no weights and always returns float32; the embedding may run in half precision.
    emb = model.time_embedding(model.time_proj(timesteps).to(dtype=sample.dtype))
    time_embeds = model.add_time_proj(added_time_ids.flatten()).reshape((batch_size, -1))
    return emb + model.add_embedding(time_embeds.to(emb.dtype))


def frames_into_batch(model, sample: torch.Tensor, timestep, added_time_ids: torch.Tensor,
                      encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample, emb, encoder_hidden_states) with the frames folded into the batch, batch-major
    (index = b*F + f), and the embedding and context repeated per frame, as the stock SVD UNet does."""
    num_frames = sample.shape[1]
    emb = svd_time_embedding(model, sample, timestep, added_time_ids)
    emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)
    encoder_hidden_states = encoder_hidden_states.repeat_interleave(
        num_frames, dim=0, output_size=encoder_hidden_states.shape[0] * num_frames)
    return sample.flatten(0, 1), emb, encoder_hidden_states


def skip_add_counts(num_down_skips: Sequence[int]) -> list[int]:
    """How many times each skip tensor receives its residual under the repeated-add injection.

    ``num_down_skips[i]`` is the number of skip tensors down block i appends (its resnets, plus
    one for a downsampler); ``conv_in`` adds the first skip. For SVD that gives
    [4]*4 + [3]*3 + [2]*3 + [1]*2.
    """
    totals, n = [], 1
    for count in num_down_skips:
        n += count
        totals.append(n)
    return [sum(k < n_i for n_i in totals) for k in range(totals[-1] if totals else 1)]


def down_block_skip_counts(down_blocks) -> list[int]:
    """Skip tensors each down block appends: one per resnet, plus one for its downsampler."""
    return [len(block.resnets) + len(block.downsamplers or ()) for block in down_blocks]


def unet_with_controlnet_residuals(
    unet: UNetSpatioTemporalConditionModel,
    sample: torch.Tensor,
    timestep,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    down_block_additional_residuals: Sequence[torch.Tensor],
    mid_block_additional_residual: torch.Tensor,
) -> torch.Tensor:
    """The stock UNet's output (B, F, out_channels, h, w), with ControlNet residuals injected.

    Same arguments as ``unet(...)`` plus the residuals of :class:`models.svd_controlnet.ControlNetSDVModel`
    (4-D, (B*F, C, h_k, w_k), one per skip tensor). All-zero residuals give the stock output.
    """
    skips_per_block = down_block_skip_counts(unet.down_blocks)
    expected = 1 + sum(skips_per_block)
    if len(down_block_additional_residuals) != expected:
        raise ValueError(
            f"the UNet has {expected} skip tensors but {len(down_block_additional_residuals)} "
            "down residuals were given")

    # The stock forward passes upsample sizes on when h, w are not multiples of the total upsampling.
    up_factor = 2 ** unet.num_upsamplers
    forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
    upsample_size = None

    batch_size, num_frames = sample.shape[:2]
    sample, emb, encoder_hidden_states = frames_into_batch(unet, sample, timestep, added_time_ids,
                                                           encoder_hidden_states)

    sample = unet.conv_in(sample)
    image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

    skips: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                image_only_indicator=image_only_indicator)
        else:
            sample, res = block(hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator)
        skips += res
        # The released quirk: every skip collected so far gets its residual again (the sample
        # going into the next block stays as it is). Kept as repeated adds, not as one add of
        # count*residual, so the rounding is the original's too.
        skips = tuple(skip + residual for skip, residual in zip(skips, down_block_additional_residuals))

    sample = unet.mid_block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                            image_only_indicator=image_only_indicator)
    sample = sample + mid_block_additional_residual

    for i, block in enumerate(unet.up_blocks):
        res = skips[-len(block.resnets):]
        skips = skips[:-len(block.resnets)]
        if i < len(unet.up_blocks) - 1 and forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                           encoder_hidden_states=encoder_hidden_states, upsample_size=upsample_size,
                           image_only_indicator=image_only_indicator)
        else:
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                           upsample_size=upsample_size, image_only_indicator=image_only_indicator)

    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    return sample.reshape(batch_size, num_frames, *sample.shape[1:])
