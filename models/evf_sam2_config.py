"""Read an EVF-SAM2 checkpoint directory's architecture: config.json (and tiny_hparams.json).

The official directories (``YxZhang/evf-sam2``, ``YxZhang/evf-sam2-multitask``) hold a
``config.json`` with ``model_type: evf``, the weights as one ``model.safetensors`` or as shards
with a ``model.safetensors.index.json``, and the XLM-R tokenizer files. ``config.json`` names only
the size *families* (``mm_extractor_scale``, ``sam_scale``); the sizes of each family are fixed
here (the weights load with ``models.checkpoint_dir``). Test checkpoints with other sizes add a
``tiny_hparams.json`` (the format of the parity pack,
``tests/parity/evf_sam2``) that replaces them (models.md 2.3, 2.10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.checkpoint_dir import read_json_object
from models.sam2_embedded import SamHeadConfig, heads_from_hparams, sam2_config_name

# BEiT-3 flags shared by every EVF size (BEiT-3's own _get_{base,large}_config).
_BEIT3_COMMON = {
    "img_size": 224,
    "patch_size": 16,
    "vocab_size": 64010,
    "multiway": True,
    "layernorm_embedding": False,
    "normalize_output": True,
    "no_output_layer": True,
    "drop_path_rate": 0,
    "checkpoint_activations": None,
}
_BEIT3_SCALES = {
    "base": {"encoder_embed_dim": 768, "encoder_attention_heads": 12,
             "encoder_ffn_embed_dim": 3072, "encoder_layers": 12},
    "large": {"encoder_embed_dim": 1024, "encoder_attention_heads": 16,
              "encoder_ffn_embed_dim": 4096, "encoder_layers": 24},
}

# EVF builds SAM 2.0 (not 2.1): the 2.0 config has exactly the checkpoint's 900 keys
# (models.md 1.3).
_SAM2_CONFIGS = {
    "large": "configs/sam2/sam2_hiera_l.yaml",
    "tiny": "configs/sam2/sam2_hiera_t.yaml",
}
# Keys that only SAM 2.1 has; a checkpoint carrying them is loaded into the 2.1 config instead.
_SAM21_ONLY_KEY = "visual_model.no_obj_embed_spatial"

TINY_HPARAMS_FILE = "tiny_hparams.json"
TINY_HPARAMS_FORMAT = "evf_sam2_tiny_hparams/v1"


@dataclass(frozen=True)
class EvfSam2Config:
    """Everything needed to rebuild the module graph of one checkpoint directory."""

    hidden_size: int  # BEiT-3 width = projector input
    out_dim: int  # projector output = SAM 2 prompt width
    beit3: dict  # torchscale EncoderConfig keyword arguments
    sam2_config: str  # Hydra config name inside the sam2 package
    sam2_overrides: list[str] = field(default_factory=list)
    sam_heads: SamHeadConfig = SamHeadConfig()


def read_config(directory: str | Path, checkpoint_keys: set[str] | None = None) -> EvfSam2Config:
    """Parse ``config.json`` (and ``tiny_hparams.json`` when present) of ``directory``.

    ``checkpoint_keys`` lets the SAM 2 generation follow the weights (2.1-only keys select the
    2.1 config of the same size); without it SAM 2.0 is assumed, as upstream does.
    """
    directory = Path(directory)
    cfg = read_json_object(directory / "config.json")
    if cfg.get("model_type") != "evf":
        raise ValueError(
            f"{directory / 'config.json'} has model_type={cfg.get('model_type')!r}; "
            "an EVF-SAM2 checkpoint has model_type 'evf'"
        )
    hidden_size, out_dim = _positive_int(cfg, "hidden_size"), _positive_int(cfg, "out_dim")

    tiny_path = directory / TINY_HPARAMS_FILE
    if tiny_path.is_file():
        beit3, sam2_config, overrides, heads = _from_tiny_hparams(tiny_path)
    else:
        beit3, sam2_config, overrides, heads = _from_scales(cfg)
    if checkpoint_keys is not None and _SAM21_ONLY_KEY in checkpoint_keys:
        sam2_config = sam2_config.replace("configs/sam2/sam2_", "configs/sam2.1/sam2.1_")

    if beit3["encoder_embed_dim"] != hidden_size:
        # Upstream EvfConfig asserts the same: the projector reads BEiT-3's output directly.
        raise ValueError(
            f"config.json hidden_size={hidden_size} differs from the BEiT-3 width "
            f"{beit3['encoder_embed_dim']}"
        )
    return EvfSam2Config(hidden_size, out_dim, beit3, sam2_config, overrides, heads)


def _from_scales(cfg: dict) -> tuple[dict, str, list[str], SamHeadConfig]:
    mm_scale, sam_scale = cfg.get("mm_extractor_scale"), cfg.get("sam_scale")
    if mm_scale not in _BEIT3_SCALES:
        raise ValueError(
            f"unsupported mm_extractor_scale {mm_scale!r}; known: {sorted(_BEIT3_SCALES)}"
        )
    if sam_scale not in _SAM2_CONFIGS:
        raise ValueError(f"unsupported sam_scale {sam_scale!r}; known: {sorted(_SAM2_CONFIGS)}")
    beit3 = {**_BEIT3_COMMON, **_BEIT3_SCALES[mm_scale]}
    return beit3, _SAM2_CONFIGS[sam_scale], [], SamHeadConfig()


def _from_tiny_hparams(path: Path) -> tuple[dict, str, list[str], SamHeadConfig]:
    hp = read_json_object(path)
    if hp.get("format") != TINY_HPARAMS_FORMAT:
        raise ValueError(
            f"{path}: expected format {TINY_HPARAMS_FORMAT!r}, got {hp.get('format')!r}"
        )
    try:
        beit3 = dict(hp["beit3"]["encoder_config"])
        sam2 = hp["sam2"]
        base = sam2["base_config_file"]
        overrides = [str(o) for o in sam2.get("hydra_overrides", [])]
        hardcoded = sam2.get("sam2_base_hardcoded", {})
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} lacks {exc}") from None
    # The pack names the yaml file only; the sam2 package keeps it under configs/sam2[.1]/.
    sam2_config = sam2_config_name(base)
    heads = heads_from_hparams(hardcoded, str(path))
    return beit3, sam2_config, overrides, heads


def _positive_int(cfg: dict, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json {key} must be a positive int, got {value!r}")
    return value
