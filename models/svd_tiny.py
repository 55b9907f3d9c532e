"""Randomly initialised tiny Stable Video Diffusion folders for tests and demos (no download).

:func:`write_tiny_svd` writes a ``StableVideoDiffusionPipeline`` in diffusers' ``save_pretrained``
layout and :func:`write_tiny_svd_controlnet` a matching temporal depth ControlNet folder in the
released layout (``config.json`` with ``_class_name: ControlNetSDVModel`` plus
``diffusion_pytorch_model.safetensors``). The sizes are those of the SVD ControlNet parity pack
(``tests/parity/svd_controlnet``): 64 channels in the second block, because the SVD resnets'
GroupNorm(32) over 32 channels cancels the time embedding and would hide time-id mistakes;
a VAE with SVD's 8x scale factor; CLIP at 224 px with 32 px patches (the pipeline always feeds
224x224). The weights are random with fixed seeds, not the pack's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from models.atomic_folder import write_folder_atomically

_SEED_SVD = 0
_SEED_CONTROLNET = 1

UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [32, 64],
    "addition_time_embed_dim": 32,
    "projection_class_embeddings_input_dim": 96,  # 3 added time ids x 32
    "layers_per_block": 1,
    "cross_attention_dim": 32,  # = CLIP projection_dim
    "transformer_layers_per_block": 1,
    "num_attention_heads": 4,
    "num_frames": 4,
}
# The released ControlNet config is the UNet's plus the conditioning embedding's widths; three
# stride-2 convs bring depth frames to latent resolution (the VAE's 8x).
CONTROLNET_CONFIG = {**UNET_CONFIG, "conditioning_channels": 3, "conditioning_embedding_out_channels": [8, 16, 32, 64]}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 32],  # 4 blocks: scale factor 8, as SVD's
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}
CLIP_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
FEATURE_EXTRACTOR_CONFIG = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}
# Stock SVD img2vid scheduler settings.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "steps_offset": 1,
}

# Each written file whose JSON must hold the settings above: the folder is reused only then.
_SVD_FILES = {
    "unet/config.json": UNET_CONFIG,
    "vae/config.json": VAE_CONFIG,
    "image_encoder/config.json": CLIP_CONFIG,
    "feature_extractor/preprocessor_config.json": FEATURE_EXTRACTOR_CONFIG,
    "scheduler/scheduler_config.json": SCHEDULER_CONFIG,
    "model_index.json": {"_class_name": "StableVideoDiffusionPipeline"},
}
_SVD_WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "image_encoder/model.safetensors")
_CONTROLNET_FILES = {"config.json": {**CONTROLNET_CONFIG, "_class_name": "ControlNetSDVModel"}}
_CONTROLNET_WEIGHTS = ("diffusion_pytorch_model.safetensors",)


def write_tiny_svd(out_dir: Path, name: str = "svd-tiny") -> Path:
    """Write the tiny SVD pipeline folder ``out_dir/<name>``; return its path.

    The weights do not depend on the caller's RNG; an existing folder with these settings is kept.
    """
    return _write_folder(Path(out_dir), name, _SVD_FILES, _SVD_WEIGHTS, _save_svd)


def write_tiny_svd_controlnet(out_dir: Path, name: str = "svd-controlnet-tiny") -> Path:
    """Write a tiny ControlNet folder for :func:`write_tiny_svd`'s UNet to ``out_dir/<name>``; return its path."""
    return _write_folder(Path(out_dir), name, _CONTROLNET_FILES, _CONTROLNET_WEIGHTS, _save_controlnet)


def _save_svd(directory: Path) -> None:
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    # fork_rng keeps the caller's global RNG stream untouched by our fixed seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED_SVD)
        unet = UNetSpatioTemporalConditionModel(**UNET_CONFIG)
        vae = AutoencoderKLTemporalDecoder(**VAE_CONFIG)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_CONFIG))
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        feature_extractor=CLIPImageProcessor(**FEATURE_EXTRACTOR_CONFIG),
    )
    pipe.save_pretrained(str(directory))


def _save_controlnet(directory: Path) -> None:
    from models.svd_controlnet import ControlNetSDVModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED_CONTROLNET)
        controlnet = ControlNetSDVModel(**CONTROLNET_CONFIG)
        with torch.no_grad():
            # A fresh ControlNet's output convs are zero, so it would change nothing: give them the
            # default conv init. With default init the 8-conv depth stack's output is mostly its
            # biases (depth moves it by about 1e-4); 3x weights give an O(1), depth-dependent
            # embedding, comparable to conv_in's output.
            for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                conv.reset_parameters()
            embedding = controlnet.controlnet_cond_embedding
            for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
                conv.reset_parameters()
                conv.weight.mul_(3.0)
    controlnet.save_pretrained(str(directory))


def _write_folder(out_dir: Path, name: str, files: dict[str, dict], weights: tuple[str, ...],
                  save: Callable[[Path], None]) -> Path:
    return write_folder_atomically(Path(out_dir) / name, save, lambda target: _is_current(target, files, weights))


def _is_current(target: Path, files: dict[str, dict], weights: tuple[str, ...]) -> bool:
    if not all((target / w).is_file() for w in weights):
        return False
    for rel, expected in files.items():
        try:
            written = json.loads((target / rel).read_text())
        except (OSError, ValueError):
            return False
        if any(written.get(k) != v for k, v in expected.items()):
            return False
    return True
