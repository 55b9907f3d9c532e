"""Read a Sa2VA checkpoint directory's architecture: config.json (+ tiny_hparams.json) -> native configs.

Official Sa2VA-1B/4B/8B directories (InternVL2.5 based, models.md 3.1-3.3) hold a ``config.json``
with ``model_type: sa2va_chat``, an InternViT ``vision_config`` and an ``llm_config`` whose
architecture is ``Qwen2ForCausalLM`` (1B/4B) or ``InternLM2ForCausalLM`` (8B). They map onto
transformers' own ``InternVLForConditionalGeneration`` (models.md 3.11): InternLM2 becomes a Llama
text model. The grounding SAM 2 is always SAM 2.0 Hiera-L; tiny test checkpoints say otherwise in
a ``tiny_hparams.json`` (the parity packs' format).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.checkpoint_dir import read_json_object
from models.sam2_embedded import SamHeadConfig, heads_from_hparams, sam2_config_name

LlmFamily = Literal["qwen2", "internlm2"]
TINY_HPARAMS_FILE = "tiny_hparams.json"
TINY_HPARAMS_FORMAT = "sa2va_tiny_hparams/v1"
SAM2_CONFIG = "configs/sam2/sam2_hiera_l.yaml"  # 2.0, not 2.1: the checkpoints have its 900 keys

# Inference constants the v1 remote code hard-codes whatever config.json says (models.md 3.2).
TILE_SIZE = 448
PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5
MIN_TILES = 1
MAX_TILES = 12
TOKENS_PER_TILE = 256
MAX_KEY_FRAMES = 5

_LLM_FAMILIES = {"Qwen2ForCausalLM": "qwen2", "InternLM2ForCausalLM": "internlm2"}


@dataclass(frozen=True)
class Sa2vaConfig:
    llm_family: LlmFamily
    vision: dict  # InternVLVisionConfig keyword arguments
    text: dict  # Qwen2Config / LlamaConfig keyword arguments
    llm_hidden_size: int
    max_context: int  # the language model's positions: a longer prompt is refused
    sam2_config: str = SAM2_CONFIG
    sam2_overrides: list[str] = field(default_factory=list)
    sam_heads: SamHeadConfig = SamHeadConfig()


def read_config(directory: str | Path) -> Sa2vaConfig:
    directory = Path(directory)
    cfg = read_json_object(directory / "config.json")
    if cfg.get("model_type") != "sa2va_chat":
        raise ValueError(f"{directory / 'config.json'} has model_type={cfg.get('model_type')!r}; "
                         "a Sa2VA checkpoint has model_type 'sa2va_chat'")
    if cfg.get("ps_version", "v2") != "v2":
        raise ValueError(f"ps_version {cfg.get('ps_version')!r} is not supported (InternVL2.5 uses v2)")
    vision_cfg, llm = cfg.get("vision_config"), cfg.get("llm_config")
    if not isinstance(vision_cfg, dict) or not isinstance(llm, dict):
        raise ValueError("config.json needs vision_config and llm_config objects")
    arch = (llm.get("architectures") or [None])[0]
    if arch not in _LLM_FAMILIES:
        raise ValueError(f"language model {arch!r} is not supported; known: {sorted(_LLM_FAMILIES)}")
    family: LlmFamily = _LLM_FAMILIES[arch]
    vision = _vision_kwargs(vision_cfg)
    text = _qwen2_kwargs(llm) if family == "qwen2" else _llama_kwargs_from_internlm2(llm)

    overrides: list[str] = []
    heads = SamHeadConfig()
    sam2_config = SAM2_CONFIG
    tiny = directory / TINY_HPARAMS_FILE
    if tiny.is_file():
        hp = read_json_object(tiny)
        if hp.get("format") != TINY_HPARAMS_FORMAT:
            raise ValueError(f"{tiny}: expected format {TINY_HPARAMS_FORMAT!r}, got {hp.get('format')!r}")
        sam2 = hp.get("sam2") or {}
        sam2_config = sam2_config_name(sam2.get("equivalent_base_config_file", "sam2_hiera_l.yaml"))
        overrides = [str(o) for o in sam2.get("hydra_overrides", [])]
        heads = heads_from_hparams(sam2.get("sam2_base_hardcoded", {}), str(tiny))
    return Sa2vaConfig(family, vision, text, int(text["hidden_size"]),
                       int(text.get("max_position_embeddings", 32768)), sam2_config, overrides, heads)


def _vision_kwargs(v: dict) -> dict:
    if v.get("qk_normalization") or v.get("norm_type", "layer_norm") != "layer_norm":
        # InternViT-6B (Sa2VA-26B) uses RMSNorm and qk-norm; only the 300M tower is supported.
        raise ValueError("only the InternViT-300M vision tower (layer norm, no qk-norm) is supported")
    size = int(v.get("image_size", TILE_SIZE))
    patch = int(v.get("patch_size", PATCH_SIZE))
    return {
        "hidden_size": int(v["hidden_size"]),
        "num_hidden_layers": int(v["num_hidden_layers"]),
        "num_attention_heads": int(v["num_attention_heads"]),
        "intermediate_size": int(v["intermediate_size"]),
        "image_size": (size, size),
        "patch_size": (patch, patch),
        "attention_bias": bool(v.get("qkv_bias", True)),
        "use_qk_norm": False,
        "layer_norm_eps": float(v.get("layer_norm_eps", 1e-6)),
        "hidden_act": v.get("hidden_act", "gelu"),
        "norm_type": "layer_norm",
        "use_mean_pooling": True,  # makes the final norm an identity: InternViT has none
        "use_absolute_position_embeddings": True,
    }


def _common_text(llm: dict) -> dict:
    return {
        "vocab_size": int(llm["vocab_size"]),
        "hidden_size": int(llm["hidden_size"]),
        "intermediate_size": int(llm["intermediate_size"]),
        "num_hidden_layers": int(llm["num_hidden_layers"]),
        "num_attention_heads": int(llm["num_attention_heads"]),
        "num_key_value_heads": int(llm.get("num_key_value_heads") or llm["num_attention_heads"]),
        "rms_norm_eps": float(llm.get("rms_norm_eps", 1e-6)),
        "max_position_embeddings": int(llm.get("max_position_embeddings", 32768)),
        "hidden_act": llm.get("hidden_act", "silu"),
        "tie_word_embeddings": bool(llm.get("tie_word_embeddings", False)),
    }


def _rope(llm: dict) -> dict:
    rope = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 1e6))}
    scaling = llm.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        rope.update({"rope_type": kind, **{k: v for k, v in scaling.items() if k not in ("type", "rope_type")}})
    return rope


def _qwen2_kwargs(llm: dict) -> dict:
    return {**_common_text(llm), "rope_parameters": _rope(llm),
            "use_sliding_window": bool(llm.get("use_sliding_window", False)),
            "sliding_window": llm.get("sliding_window"), "max_window_layers": llm.get("max_window_layers")}


def _llama_kwargs_from_internlm2(llm: dict) -> dict:
    # InternLM2 is Llama with a fused, per-KV-group packed wqkv (models.md 3.11).
    return {**_common_text(llm), "rope_parameters": _rope(llm), "attention_bias": bool(llm.get("bias", False)),
            "mlp_bias": False}
