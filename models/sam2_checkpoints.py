"""Catalogue of the official SAM 2.1 checkpoints: download URL and matching Hydra config."""

from __future__ import annotations

from dataclasses import dataclass

_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"


@dataclass(frozen=True)
class CheckpointInfo:
    """One published checkpoint.

    ``sha256`` is ``None`` where no digest is published by Meta next to the file; callers then
    rely on the strict key and shape check done when the state dict is loaded.
    """

    name: str
    url: str
    config: str
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


def _official(name: str, config_suffix: str) -> CheckpointInfo:
    return CheckpointInfo(
        name=name,
        url=f"{_BASE_URL}/{name}.pt",
        config=f"configs/sam2.1/sam2.1_hiera_{config_suffix}.yaml",
    )


# Meta publishes no checksums for these files (neither on dl.fbaipublicfiles.com nor in the
# sam2 repository), so none is pinned here: a guessed value would only make downloads fail.
OFFICIAL_SAM2: dict[str, CheckpointInfo] = {
    info.name: info
    for info in (
        _official("sam2.1_hiera_tiny", "t"),
        _official("sam2.1_hiera_small", "s"),
        _official("sam2.1_hiera_base_plus", "b+"),
        _official("sam2.1_hiera_large", "l"),
    )
}


def get_checkpoint_info(name: str) -> CheckpointInfo:
    """Look up ``name`` (with or without the ``.pt`` suffix); KeyError lists the known names."""
    key = name.removesuffix(".pt")
    try:
        return OFFICIAL_SAM2[key]
    except KeyError:
        known = ", ".join(sorted(OFFICIAL_SAM2))
        raise KeyError(f"unknown SAM 2.1 checkpoint {name!r}; known: {known}") from None
