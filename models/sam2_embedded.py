"""SAM 2.0 as EVF-SAM2 and Sa2VA checkpoints embed it: the decoder constants and their tiny variants.

Both models ship the weights of a ``sam2_hiera_l.yaml`` (SAM 2.0) model under a prefix of their own
(models.md 1.3, 3.10). ``SAM2Base._build_sam_heads`` hard-codes some sizes of the prompt encoder
and the mask decoder; the tiny test checkpoints (parity packs, ``visus models tiny``) use other
values, listed in their ``tiny_hparams.json`` under ``sam2_base_hardcoded``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class SamHeadConfig:
    """Constants that ``SAM2Base._build_sam_heads`` hard-codes; the defaults are its values."""

    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


# tiny_hparams.json names (SAM2 module paths) -> SamHeadConfig fields.
HEAD_FIELDS = {
    "sam_prompt_encoder.mask_in_chans": "mask_in_chans",
    "sam_mask_decoder.num_multimask_outputs": "num_multimask_outputs",
    "sam_mask_decoder.transformer.depth": "transformer_depth",
    "sam_mask_decoder.transformer.mlp_dim": "transformer_mlp_dim",
    "sam_mask_decoder.transformer.num_heads": "transformer_num_heads",
    "sam_mask_decoder.transformer.attention_downsample_rate": "attention_downsample_rate",
    "sam_mask_decoder.iou_head_depth": "iou_head_depth",
    "sam_mask_decoder.iou_head_hidden_dim": "iou_head_hidden_dim",
}
assert set(HEAD_FIELDS.values()) == {f.name for f in fields(SamHeadConfig)}


def heads_from_hparams(hardcoded: dict, source: str) -> SamHeadConfig:
    """``sam2_base_hardcoded`` of a tiny_hparams.json (``{name: value}`` or ``{name: {"value": v}}``)."""
    heads: dict = {}
    for name, entry in hardcoded.items():
        if name not in HEAD_FIELDS:
            raise ValueError(f"{source}: unknown SAM 2 head constant {name!r}")
        heads[HEAD_FIELDS[name]] = int(entry["value"] if isinstance(entry, dict) else entry)
    return SamHeadConfig(**heads)


def sam2_config_name(base_config_file: str) -> str:
    """The sam2 package's Hydra name for a yaml file named bare (``sam2_hiera_l.yaml``) or in full."""
    base = base_config_file.split()[0]
    if base.startswith("configs/"):
        return base
    family = "sam2.1" if base.startswith("sam2.1_") else "sam2"
    return f"configs/{family}/{base}"


def rebuild_sam_heads(model: torch.nn.Module, heads: SamHeadConfig) -> None:
    """Replace the prompt encoder and mask decoder of ``model`` with ones of the ``heads`` sizes.

    Everything else is taken from the model, as ``_build_sam_heads`` does. A no-op for the real
    sizes, so callers may call it unconditionally.
    """
    if heads == SamHeadConfig():
        return
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder
    from sam2.modeling.sam.transformer import TwoWayTransformer

    dim, grid = model.sam_prompt_embed_dim, model.sam_image_embedding_size
    model.sam_prompt_encoder = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(grid, grid),
        input_image_size=(model.image_size, model.image_size),
        mask_in_chans=heads.mask_in_chans,
    )
    model.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=heads.num_multimask_outputs,
        transformer=TwoWayTransformer(
            depth=heads.transformer_depth,
            embedding_dim=dim,
            mlp_dim=heads.transformer_mlp_dim,
            num_heads=heads.transformer_num_heads,
            attention_downsample_rate=heads.attention_downsample_rate,
        ),
        transformer_dim=dim,
        iou_head_depth=heads.iou_head_depth,
        iou_head_hidden_dim=heads.iou_head_hidden_dim,
        use_high_res_features=model.use_high_res_features_in_sam,
        iou_prediction_use_sigmoid=model.iou_prediction_use_sigmoid,
        pred_obj_scores=model.pred_obj_scores,
        pred_obj_scores_mlp=model.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=model.use_multimask_token_for_obj_ptr,
        **(model.sam_mask_decoder_extra_args or {}),
    )
