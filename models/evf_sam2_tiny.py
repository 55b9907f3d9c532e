"""A randomly initialised tiny EVF-SAM2 checkpoint directory for tests and demos (no download).

The directory has the official layout (config.json, model.safetensors, XLM-R tokenizer files) plus
the ``tiny_hparams.json`` that :func:`models.evf_sam2_config.read_config` reads for the small
sizes, which are those of the parity pack (``tests/parity/evf_sam2``). The tokenizer is the pack's
250-piece sentencepiece model, shipped in ``models/assets/evf_sam2_tiny``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.atomic_folder import holds_exactly, write_folder_atomically
from models.checkpoint_dir import SAFETENSORS_FILE
from models.evf_sam2_config import (
    TINY_HPARAMS_FILE,
    TINY_HPARAMS_FORMAT,
    read_config,
)

ASSETS = Path(__file__).parent / "assets" / "evf_sam2_tiny"
SEMANTIC_ID = "252"  # the [semantic] added token in the shipped tokenizer files

TINY_CONFIG_JSON = {
    "architectures": ["EvfSam2Model"],
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_size": 32,
    "mm_extractor_scale": "large",
    "model_type": "evf",
    "out_dim": 32,
    "pad_token_id": 1,
    "sam_scale": "large",
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}

TINY_HPARAMS = {
    "format": TINY_HPARAMS_FORMAT,
    "description": "Tiny EVF-SAM2 written by models.evf_sam2_tiny: the real module graph with "
    "small widths (the parity pack's sizes) and random weights.",
    "beit3": {
        "encoder_config": {
            "img_size": 224,
            "patch_size": 16,
            "vocab_size": 260,  # 253 token ids + spare rows, like the real 64010
            "multiway": True,
            "layernorm_embedding": False,
            "normalize_output": True,
            "no_output_layer": True,
            "drop_path_rate": 0,
            "encoder_embed_dim": 32,
            "encoder_attention_heads": 4,
            "encoder_ffn_embed_dim": 128,
            "encoder_layers": 2,
            "checkpoint_activations": None,
        },
    },
    "sam2": {
        "base_config_file": "sam2_hiera_l.yaml",
        "hydra_overrides": [
            "++model.image_encoder.trunk.embed_dim=8",
            "++model.image_encoder.trunk.num_heads=1",
            "++model.image_encoder.trunk.stages=[1,1,2,1]",
            # Only blocks 0 or 3 may be global with these stages: 1, 2 and 4 are q-pool blocks.
            "++model.image_encoder.trunk.global_att_blocks=[3]",
            "++model.image_encoder.trunk.window_spec=[8,4,16,8]",
            "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[7,7]",
            "++model.image_encoder.neck.d_model=32",
            "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
            "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
            "++model.memory_attention.d_model=32",
            "++model.memory_attention.num_layers=2",
            "++model.memory_attention.layer.d_model=32",
            "++model.memory_attention.layer.dim_feedforward=64",
            "++model.memory_attention.layer.self_attention.embedding_dim=32",
            "++model.memory_attention.layer.cross_attention.embedding_dim=32",
            "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
            "++model.memory_encoder.out_dim=16",
            "++model.memory_encoder.in_dim=32",
            "++model.memory_encoder.position_encoding.num_pos_feats=16",
            "++model.memory_encoder.mask_downsampler.embed_dim=32",
            "++model.memory_encoder.fuser.layer.dim=32",
        ],
        "sam2_base_hardcoded": {
            "sam_prompt_encoder.mask_in_chans": {"value": 16},
            "sam_mask_decoder.num_multimask_outputs": {"value": 3},
            "sam_mask_decoder.transformer.depth": {"value": 2},
            "sam_mask_decoder.transformer.mlp_dim": {"value": 64},
            "sam_mask_decoder.transformer.num_heads": {"value": 2},
            "sam_mask_decoder.transformer.attention_downsample_rate": {"value": 2},
            "sam_mask_decoder.iou_head_depth": {"value": 3},
            "sam_mask_decoder.iou_head_hidden_dim": {"value": 32},
        },
    },
}

_SEED = 0


def write_tiny_evf_sam2(out_dir: Path, multitask: bool = True, name: str | None = None) -> Path:
    """Write the tiny EVF-SAM2 checkpoint directory ``out_dir/<name>``; return its path.

    ``multitask=False`` gives a legacy-style checkpoint: no ``[semantic]`` token (no
    ``added_tokens.json``), so it loads in legacy mode. The weights are the same for both and
    do not depend on the caller's RNG. An existing directory with the same content is kept.
    """
    out_dir = Path(out_dir)
    name = name or ("evf_sam2_tiny_multitask" if multitask else "evf_sam2_tiny")
    files = _small_files(multitask)

    def write(folder: Path) -> None:
        for fname, data in files.items():
            (folder / fname).write_bytes(data)
        _write_weights(folder)

    return write_folder_atomically(out_dir / name, write, lambda target: holds_exactly(target, files, {SAFETENSORS_FILE}))


def _small_files(multitask: bool) -> dict[str, bytes]:
    """Every file but the weights, as bytes."""
    tok_config = json.loads((ASSETS / "tokenizer_config.json").read_text())
    files = {
        "config.json": _json_bytes(TINY_CONFIG_JSON),
        TINY_HPARAMS_FILE: _json_bytes(TINY_HPARAMS),
        "sentencepiece.bpe.model": (ASSETS / "sentencepiece.bpe.model").read_bytes(),
        "special_tokens_map.json": (ASSETS / "special_tokens_map.json").read_bytes(),
    }
    if multitask:
        files["added_tokens.json"] = (ASSETS / "added_tokens.json").read_bytes()
    else:
        # The tokenizer config repeats the added token; a legacy checkpoint has neither.
        tok_config["added_tokens_decoder"].pop(SEMANTIC_ID, None)
    files["tokenizer_config.json"] = _json_bytes(tok_config)
    return files


def _write_weights(directory: Path) -> None:
    from safetensors.torch import save_file

    from models.evf_sam2 import EvfSam2Net, checkpoint_from_module_keys

    config = read_config(directory)
    # fork_rng keeps the caller's global RNG stream untouched by our fixed seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        net = EvfSam2Net(config)
        with torch.no_grad():
            # With the default init the vision [CLS] output barely sees the few text tokens
            # (attention is near uniform over 197 image tokens) and the mask logits sit near 0:
            # every prompt gives the same mask. Larger text values, projector and hypernetwork
            # outputs make the mask depend on the prompt (tens of percent of the pixels differ
            # between prompts) with logits of order 0.5.
            for layer in net.mm_extractor.beit3.encoder.layers:
                layer.self_attn.v_proj.B.weight.mul_(64.0)
            net.text_hidden_fcs[0][2].weight.mul_(8.0)
            for mlp in net.visual_model.sam_mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.mul_(64.0)
    state = {k: v.contiguous() for k, v in checkpoint_from_module_keys(net.state_dict()).items()}
    save_file(state, str(directory / SAFETENSORS_FILE), metadata={"format": "pt"})


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()
