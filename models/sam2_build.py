"""Build a SAM 2 / 2.1 model from a checkpoint, resolving its Hydra config and input size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

# Official file stems -> config suffix. The short suffixes (t, s, b+, l) are accepted as well so
# that files named after their config resolve too.
_SIZE_SUFFIX = {
    "tiny": "t", "small": "s", "base_plus": "b+", "large": "l",
    "t": "t", "s": "s", "b+": "b+", "l": "l",
}
_OFFICIAL_STEM = re.compile(r"(sam2\.1|sam2)_hiera_(tiny|small|base_plus|large|t|s|b\+|l)")


def sam2_size_overrides(image_size: int) -> list[str]:
    """Hydra overrides that run the architecture at ``image_size`` x ``image_size`` input.

    The memory-attention RoPE sizes are recomputed by the model when they disagree, so they are
    set only to keep the config consistent (models.md 1.2).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if image_size % 32:
        # Hiera tiles an 8x8 window over the stride-4 grid, so (S / 4) must divide by 8.
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
    f = image_size // 16
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{f},{f}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{f},{f}]",
    ]


def sidecar_path(checkpoint: str | Path) -> Path:
    """``foo.pt`` -> ``foo.json``: the optional description of a non-official checkpoint."""
    return Path(checkpoint).with_suffix(".json")


def infer_config(checkpoint: str | Path) -> str:
    """Config name for an official checkpoint file name, e.g. ``sam2.1_hiera_tiny.pt``."""
    stem = Path(checkpoint).stem
    m = _OFFICIAL_STEM.fullmatch(stem)
    if m is None:
        raise ValueError(
            f"cannot tell the SAM 2 config of {Path(checkpoint).name!r}: pass config=..., or put a "
            f"{sidecar_path(checkpoint).name!r} next to it with keys 'config' and 'overrides'"
        )
    family, size = m.groups()
    return f"configs/{family}/{family}_hiera_{_SIZE_SUFFIX[size]}.yaml"


def resolve_build_args(
    checkpoint: str | Path,
    config: str | None = None,
    overrides: list[str] | None = None,
    image_size: int | None = None,
) -> tuple[str, list[str]]:
    """Return ``(config, hydra_overrides)`` for ``checkpoint``.

    Precedence: an explicit ``config`` (the sidecar is then ignored) > the sidecar JSON > the
    official file name. Explicit ``overrides`` come after the sidecar's, and an explicit
    ``image_size`` replaces the sidecar's; the size overrides are appended last.
    """
    side: dict = {}
    if config is None:
        path = sidecar_path(checkpoint)
        if path.is_file():
            side = json.loads(path.read_text())
            if not isinstance(side, dict) or not isinstance(side.get("config"), str):
                raise ValueError(f"{path} must be a JSON object with a string 'config'")
            config = side["config"]
        else:
            config = infer_config(checkpoint)

    resolved = [*side.get("overrides", []), *(overrides or [])]
    size = image_size if image_size is not None else side.get("image_size")
    if size is not None:
        resolved += sam2_size_overrides(size)
    return config, resolved


def load_sam2(
    checkpoint: str | Path,
    device: str = "cpu",
    config: str | None = None,
    overrides: list[str] | None = None,
    image_size: int | None = None,
) -> torch.nn.Module:
    """Build the SAM2Base model for ``checkpoint``, load its weights strictly, in eval mode.

    ``image_size`` (a multiple of 32) runs the model at a smaller or larger input than the one
    in its config; the weights do not depend on it.
    """
    from sam2.build_sam import build_sam2  # imported late: importing sam2 initialises Hydra

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"SAM 2 checkpoint not found: {checkpoint}")
    config, hydra_overrides = resolve_build_args(checkpoint, config, overrides, image_size)
    model = build_sam2(
        config,
        ckpt_path=str(checkpoint),
        device=device,
        mode="eval",
        hydra_overrides_extra=hydra_overrides,
    )
    return model.eval()
