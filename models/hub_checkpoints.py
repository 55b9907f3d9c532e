"""Catalogue of the official checkpoint *directories* on the Hugging Face Hub, and their download.

EVF-SAM2, Grounding DINO, SVD, the depth ControlNet and Sa2VA ship as folders (config, safetensors,
tokenizer files), not one file. Each file is fetched with `models.download.download` (resumable,
atomic), straight from the Hub's `resolve/main` URLs or from a mirror with the same layout. Gated
repositories (Stability's SVD) need `HF_TOKEN` in the environment, sent as a bearer token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from models.download import DownloadError, download

HUB_URL = "https://huggingface.co"


@dataclass(frozen=True)
class HubCheckpoint:
    name: str  # also the folder name under <model dir>/<family>/
    family: str  # the model dir's sub-folder: evf_sam2, grounding_dino
    repo: str
    files: tuple[str, ...]
    optional: tuple[str, ...] = ()  # fetched when the repository has them
    subfolder: str = ""  # where the files sit in the repository; they land directly in the folder
    # Weights as one model.safetensors, or as the shards model.safetensors.index.json lists.
    safetensors_weights: bool = False

    def url(self, filename: str, base_url: str = HUB_URL) -> str:
        path = f"{self.subfolder}/{filename}" if self.subfolder else filename
        return f"{base_url.rstrip('/')}/{self.repo}/resolve/main/{path}"


_EVF_FILES = ("config.json", "model.safetensors", "sentencepiece.bpe.model", "special_tokens_map.json",
              "tokenizer_config.json")
_GDINO_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                "tokenizer_config.json", "vocab.txt")

# diffusers' save_pretrained layout of StableVideoDiffusionPipeline.
_SVD_FILES = ("model_index.json", "feature_extractor/preprocessor_config.json", "image_encoder/config.json",
              "image_encoder/model.safetensors", "scheduler/scheduler_config.json", "unet/config.json",
              "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors")

# Sa2VA (models.md 3.1, 3.10): InternVL2.5-based; 8B has the InternLM2 tokenizer, 1B/4B Qwen2's.
_SA2VA_COMMON = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_SA2VA_QWEN2 = (*_SA2VA_COMMON, "vocab.json", "merges.txt")
_SA2VA_INTERNLM2 = (*_SA2VA_COMMON, "tokenizer.model")

HUB_CHECKPOINTS: dict[str, HubCheckpoint] = {c.name: c for c in (
    HubCheckpoint("evf-sam2", "evf_sam2", "YxZhang/evf-sam2", _EVF_FILES),
    # The multitask checkpoint's `[semantic]` token lives in added_tokens.json.
    HubCheckpoint("evf-sam2-multitask", "evf_sam2", "YxZhang/evf-sam2-multitask", _EVF_FILES,
                  optional=("added_tokens.json",)),
    HubCheckpoint("grounding-dino-tiny", "grounding_dino", "IDEA-Research/grounding-dino-tiny", _GDINO_FILES,
                  optional=("tokenizer.json",)),
    HubCheckpoint("grounding-dino-base", "grounding_dino", "IDEA-Research/grounding-dino-base", _GDINO_FILES,
                  optional=("tokenizer.json",)),
    HubCheckpoint("stable-video-diffusion-img2vid", "svd", "stabilityai/stable-video-diffusion-img2vid", _SVD_FILES),
    HubCheckpoint("stable-video-diffusion-img2vid-xt", "svd", "stabilityai/stable-video-diffusion-img2vid-xt",
                  _SVD_FILES),
    HubCheckpoint("temporal-controlnet-depth-svd-v1", "svd", "CiaraRowles/temporal-controlnet-depth-svd-v1",
                  ("config.json", "diffusion_pytorch_model.safetensors"), subfolder="controlnet"),
    HubCheckpoint("Sa2VA-1B", "sa2va", "ByteDance/Sa2VA-1B", _SA2VA_QWEN2, optional=("tokenizer.json",),
                  safetensors_weights=True),
    HubCheckpoint("Sa2VA-4B", "sa2va", "ByteDance/Sa2VA-4B", _SA2VA_QWEN2, optional=("tokenizer.json",),
                  safetensors_weights=True),
    HubCheckpoint("Sa2VA-8B", "sa2va", "ByteDance/Sa2VA-8B", _SA2VA_INTERNLM2, safetensors_weights=True),
)}


def download_checkpoint_dir(checkpoint: HubCheckpoint, dest: Path, base_url: str = HUB_URL,
                            progress: bool = True) -> Path:
    """Every file of `checkpoint` into `dest` (a folder); returns `dest`. Files already there are kept."""
    dest = Path(dest)
    token = os.environ.get("HF_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    for filename in checkpoint.files:
        download(checkpoint.url(filename, base_url), dest / filename, progress=progress, headers=headers)
    for filename in checkpoint.optional:
        _download_optional(checkpoint, filename, dest, base_url, progress, headers)
    if checkpoint.safetensors_weights:
        index = "model.safetensors.index.json"
        if _download_optional(checkpoint, index, dest, base_url, progress, headers):
            weight_map = json.loads((dest / index).read_text()).get("weight_map") or {}
            shards = sorted(set(weight_map.values()))
            if not shards or any("/" in s or s.startswith(".") for s in shards):
                raise DownloadError(f"{index} of {checkpoint.repo} lists no usable shard names")
        else:
            shards = ["model.safetensors"]
        for filename in shards:
            download(checkpoint.url(filename, base_url), dest / filename, progress=progress, headers=headers)
    return dest


def _download_optional(checkpoint: HubCheckpoint, filename: str, dest: Path, base_url: str, progress: bool,
                       headers) -> bool:
    try:
        download(checkpoint.url(filename, base_url), dest / filename, progress=progress, headers=headers)
        return True
    except DownloadError:
        (dest / f"{filename}.part").unlink(missing_ok=True)  # the repository does not have it
        return False
