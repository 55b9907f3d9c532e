"""Turn a boolean segmentation mask into a displayable image: the bare mask or an overlay."""

from __future__ import annotations

import numpy as np
from PIL import Image

OVERLAY_COLOR = (30, 144, 255)
OVERLAY_ALPHA = 0.6


def render_mask(
    mask: np.ndarray,
    image: np.ndarray | None = None,
    apply_mask: bool = False,
    color: tuple[int, int, int] = OVERLAY_COLOR,
    alpha: float = OVERLAY_ALPHA,
) -> Image.Image:
    """Render ``mask`` (``(H, W)`` bool).

    * ``apply_mask=False``: a mode ``"L"`` image, 255 on the object and 0 elsewhere (``image``
      is ignored). Single-channel keeps PNGs small and is what mask consumers expect.
    * ``apply_mask=True``: ``image`` (``(H, W, 3)`` uint8 RGB) as a mode ``"RGB"`` image with
      ``color`` blended over the object at opacity ``alpha``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)

    if not apply_mask:
        return Image.fromarray(mask.astype(np.uint8) * 255)

    if image is None:
        raise ValueError("apply_mask=True needs the original image")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    tint = np.asarray(color, dtype=np.float32)
    blended = image.astype(np.float32) * (1.0 - alpha) + tint * alpha
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out = np.where(mask[:, :, None], blended, image)
    return Image.fromarray(out)
