"""Sa2VA checkpoint keys <-> the modules Visus builds (native InternVL, sam2's SAM 2.0, the [SEG] head).

The official layout (models.md 3.10) keeps InternVL's original names: ``vision_model.*`` with a
fused ``attn.qkv``, ``mlp1.{0,1,3}``, ``language_model.*`` in Qwen2 or InternLM2 names (InternLM2
packs q/k/v per KV group in one ``wqkv``), ``grounding_encoder.sam2_model.*`` and
``text_hidden_fcs.{0,2}``. :func:`split_checkpoint` maps them onto transformers'
``InternVLForConditionalGeneration`` names (models.md 3.11), the sam2 package's names and our
projector; :func:`join_checkpoint` is its inverse, used to write tiny checkpoints.
"""

from __future__ import annotations

import re

import torch

from models.sa2va_config import Sa2vaConfig

SAM_PREFIX = "grounding_encoder.sam2_model."
FCS_PREFIX = "text_hidden_fcs."
_FUSER_SCALE = re.compile(r"^(memory_encoder\.fuser\.layers\.\d+)\.g_weight$")
_FUSER_GAMMA = re.compile(r"^(memory_encoder\.fuser\.layers\.\d+)\.gamma$")

# Simple renames, checkpoint -> native (regex on the key after the layer number is substituted).
_VISION = [
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls1$", r"model.vision_tower.encoder.layer.\1.lambda_1"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls2$", r"model.vision_tower.encoder.layer.\1.lambda_2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.", r"model.vision_tower.encoder.layer.\1.attention.projection_layer."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.", r"model.vision_tower.encoder.layer.\1.layernorm_before."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.", r"model.vision_tower.encoder.layer.\1.layernorm_after."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"model.vision_tower.encoder.layer.\1.mlp."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
]
_QWEN2 = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]
_INTERNLM2 = [
    (r"^language_model\.model\.tok_embeddings\.", "model.language_model.embed_tokens."),
    (r"^language_model\.model\.layers\.(\d+)\.attention\.wo\.", r"model.language_model.layers.\1.self_attn.o_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.", r"model.language_model.layers.\1.mlp.gate_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.", r"model.language_model.layers.\1.mlp.up_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.", r"model.language_model.layers.\1.mlp.down_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.attention_norm\.", r"model.language_model.layers.\1.input_layernorm."),
    (r"^language_model\.model\.layers\.(\d+)\.ffn_norm\.", r"model.language_model.layers.\1.post_attention_layernorm."),
    (r"^language_model\.model\.norm\.", "model.language_model.norm."),
    (r"^language_model\.output\.", "lm_head."),
]
_VISION_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_WQKV = re.compile(r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.weight$")


def split_internlm2_wqkv(w: torch.Tensor, n_heads: int, n_kv: int, head_dim: int):
    """InternLM2's wqkv rows are ``n_kv x (q_per_kv + 2) x head_dim``: per KV group its queries, k, v."""
    g = w.reshape(n_kv, n_heads // n_kv + 2, head_dim, w.shape[-1])
    return (g[:, :-2].reshape(n_heads * head_dim, -1), g[:, -2].reshape(n_kv * head_dim, -1),
            g[:, -1].reshape(n_kv * head_dim, -1))


def join_internlm2_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, n_kv: int,
                        head_dim: int) -> torch.Tensor:
    hidden = q.shape[-1]
    groups = torch.cat([q.reshape(n_kv, n_heads // n_kv, head_dim, hidden), k.reshape(n_kv, 1, head_dim, hidden),
                        v.reshape(n_kv, 1, head_dim, hidden)], dim=1)
    return groups.reshape(-1, hidden)


def split_checkpoint(state: dict[str, torch.Tensor], config: Sa2vaConfig):
    """(InternVL state, SAM 2 state, projector state) from the checkpoint's tensors.

    Unknown keys raise ``ValueError`` naming them; missing ones are caught by the strict loads.
    """
    mllm: dict[str, torch.Tensor] = {}
    sam: dict[str, torch.Tensor] = {}
    fcs: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    text_rules = _QWEN2 if config.llm_family == "qwen2" else _INTERNLM2
    text = config.text
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    for key, value in state.items():
        if key.startswith(SAM_PREFIX):
            sam[_FUSER_SCALE.sub(r"\1.gamma", key[len(SAM_PREFIX):])] = value
        elif key.startswith(FCS_PREFIX):
            fcs[key[len(FCS_PREFIX):]] = value
        elif m := _VISION_QKV.match(key):
            base = f"model.vision_tower.encoder.layer.{m[1]}.attention."
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                mllm[f"{base}{name}.{m[2]}"] = part
        elif config.llm_family == "internlm2" and (m := _WQKV.match(key)):
            base = f"model.language_model.layers.{m[1]}.self_attn."
            q, k, v = split_internlm2_wqkv(value, text["num_attention_heads"], text["num_key_value_heads"], head_dim)
            mllm.update({base + "q_proj.weight": q, base + "k_proj.weight": k, base + "v_proj.weight": v})
        else:
            new = _rename(key, _VISION + text_rules)
            if new is None:
                unknown.append(key)
            else:
                mllm[new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} unexpected key(s) in the Sa2VA checkpoint: {sorted(unknown)[:8]}")
    return mllm, sam, fcs


def join_checkpoint(mllm: dict[str, torch.Tensor], sam: dict[str, torch.Tensor], fcs: dict[str, torch.Tensor],
                    config: Sa2vaConfig) -> dict[str, torch.Tensor]:
    """The official checkpoint layout from module state dicts (inverse of :func:`split_checkpoint`)."""
    out: dict[str, torch.Tensor] = {}
    text = config.text
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    inverse = [(_inverse_pattern(new), _inverse_repl(old)) for old, new in
               _VISION + (_QWEN2 if config.llm_family == "qwen2" else _INTERNLM2)]
    pending_qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in mllm.items():
        m = re.match(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)$", key)
        if m:
            pending_qkv.setdefault(f"vision_model.encoder.layers.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = value
            continue
        m = re.match(r"^model\.language_model\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$", key)
        if m and config.llm_family == "internlm2":
            pending_qkv.setdefault(f"language_model.model.layers.{m[1]}.attention.wqkv.{m[3]}", {})[m[2]] = value
            continue
        new = _rename(key, inverse)
        if new is None:
            raise ValueError(f"no checkpoint name for module key {key!r}")
        out[new] = value
    for key, parts in pending_qkv.items():
        if ".wqkv." in key:
            out[key] = join_internlm2_wqkv(parts["q"], parts["k"], parts["v"], text["num_attention_heads"],
                                           text["num_key_value_heads"], head_dim)
        else:
            out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    out.update({SAM_PREFIX + _FUSER_GAMMA.sub(r"\1.g_weight", k): v for k, v in sam.items()})
    out.update({FCS_PREFIX + k: v for k, v in fcs.items()})
    return out


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def _inverse_pattern(native: str) -> str:
    # Native names are literal except for a \1 layer number.
    return "^" + re.escape(native).replace(r"\\1", r"(\d+)")


def _inverse_repl(checkpoint_pattern: str) -> str:
    plain = checkpoint_pattern.lstrip("^").replace(r"\.", ".").replace(r"(\d+)", r"\1")
    return plain.rstrip("$")
