"""Randomly initialised SAM 2.1 checkpoints for tests and benchmarks (no download needed).

Files use the official layout (``{"model": state_dict}``, loadable with ``weights_only=True``)
plus the sidecar JSON that :func:`models.sam2_build.load_sam2` reads to rebuild the architecture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from models.sam2_build import sam2_size_overrides, sidecar_path

SAM21_TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"

# The hiera_t module graph with tiny widths: 1.33M parameters, about 5 MB (models.md 1.2).
MICRO_OVERRIDES: list[str] = [
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    # Only blocks 0 or 3 may be global with these stages: 1, 2 and 4 are q-pool blocks.
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.d_model=64",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=64",
    "++model.memory_attention.d_model=64",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=64",
    "++model.memory_attention.layer.dim_feedforward=128",
    "++model.memory_attention.layer.self_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=32",
    "++model.memory_encoder.out_dim=32",
    "++model.memory_encoder.in_dim=64",
    "++model.memory_encoder.mask_downsampler.embed_dim=64",
    "++model.memory_encoder.position_encoding.num_pos_feats=32",
    "++model.memory_encoder.fuser.layer.dim=64",
    "++model.memory_encoder.fuser.num_layers=1",
]


def write_tiny_sam2(out_dir: Path, name: str = "sam2.1_hiera_micro", image_size: int = 128) -> Path:
    """Write the "micro" SAM 2.1 test model to ``out_dir/<name>.pt``; return that path."""
    return _write_random(Path(out_dir), name, SAM21_TINY_CONFIG, MICRO_OVERRIDES, image_size)


def write_random_sam2(
    out_dir: Path,
    name: str = "sam2.1_hiera_t_256",
    config: str = SAM21_TINY_CONFIG,
    image_size: int = 256,
) -> Path:
    """Write a real-architecture SAM 2.1 model with random weights, for timing; return its path."""
    return _write_random(Path(out_dir), name, config, [], image_size)


def _write_random(
    out_dir: Path, name: str, config: str, overrides: list[str], image_size: int
) -> Path:
    from sam2.build_sam import build_sam2

    path = out_dir / f"{name}.pt"
    side_path = sidecar_path(path)
    sidecar = {"config": config, "overrides": list(overrides), "image_size": image_size}
    if path.is_file() and side_path.is_file() and _read_json(side_path) == sidecar:
        return path

    out_dir.mkdir(parents=True, exist_ok=True)
    # fork_rng keeps the caller's global RNG stream untouched by our fixed seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_sam2(
            config,
            ckpt_path=None,
            device="cpu",
            hydra_overrides_extra=[*overrides, *sam2_size_overrides(image_size)],
        )
    with torch.no_grad():
        # Random weights score "no object" almost everywhere, which blanks every mask
        # (models.md 1.6); a large bias on the object-score head keeps masks non-empty.
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)

    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict()}, tmp)
    os.replace(tmp, path)
    # The sidecar goes last: a .pt without a matching sidecar is rewritten on the next call.
    tmp_side = side_path.with_name(side_path.name + ".tmp")
    tmp_side.write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(tmp_side, side_path)
    return path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
