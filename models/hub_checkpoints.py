"""Catalogue of the official checkpoint *directories* on the Hugging Face Hub, and their download.

EVF-SAM2 and Grounding DINO ship as folders (config, safetensors, tokenizer files), not one file.
Each file is fetched with `models.download.download` (resumable, atomic), straight from the
Hub's `resolve/main` URLs or from a mirror with the same layout.
"""

from __future__ import annotations

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

    def url(self, filename: str, base_url: str = HUB_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.repo}/resolve/main/{filename}"


_EVF_FILES = ("config.json", "model.safetensors", "sentencepiece.bpe.model", "special_tokens_map.json",
              "tokenizer_config.json")
_GDINO_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                "tokenizer_config.json", "vocab.txt")

HUB_CHECKPOINTS: dict[str, HubCheckpoint] = {c.name: c for c in (
    HubCheckpoint("evf-sam2", "evf_sam2", "YxZhang/evf-sam2", _EVF_FILES),
    # The multitask checkpoint's `[semantic]` token lives in added_tokens.json.
    HubCheckpoint("evf-sam2-multitask", "evf_sam2", "YxZhang/evf-sam2-multitask", _EVF_FILES,
                  optional=("added_tokens.json",)),
    HubCheckpoint("grounding-dino-tiny", "grounding_dino", "IDEA-Research/grounding-dino-tiny", _GDINO_FILES,
                  optional=("tokenizer.json",)),
    HubCheckpoint("grounding-dino-base", "grounding_dino", "IDEA-Research/grounding-dino-base", _GDINO_FILES,
                  optional=("tokenizer.json",)),
)}


def download_checkpoint_dir(checkpoint: HubCheckpoint, dest: Path, base_url: str = HUB_URL,
                            progress: bool = True) -> Path:
    """Every file of `checkpoint` into `dest` (a folder); returns `dest`. Files already there are kept."""
    dest = Path(dest)
    for filename in checkpoint.files:
        download(checkpoint.url(filename, base_url), dest / filename, progress=progress)
    for filename in checkpoint.optional:
        try:
            download(checkpoint.url(filename, base_url), dest / filename, progress=progress)
        except DownloadError:
            (dest / f"{filename}.part").unlink(missing_ok=True)  # the repository does not have it
    return dest
