"""Post-process a segmentation mask the way fal's ``fal-ai/evf-sam`` options do, and compose output.

The options are ``negative_prompt`` (its mask is subtracted), ``fill_holes``, ``expand_mask``,
``revert_mask`` and ``blur_mask``; ``mask_only`` picks the output image. Each is a small pure
function on ``(H, W)`` masks; :func:`postprocess` applies them in one fixed order (see there).
"""

from __future__ import annotations

import numbers

import numpy as np
from PIL import Image
from scipy import ndimage

EXPAND_MAX = 100
BLUR_MAX = 50

# OpenCV's getGaussianKernel does not use its sigma formula for odd sizes up to 7 (with sigma
# <= 0, as GaussianBlur(mask, (k, k), 0) calls it): it takes these fixed kernels. Copying them
# makes blur_mask=3, 5, 7 give what cv2 users know.
_SMALL_KERNELS = {
    3: np.array([1.0, 2.0, 1.0]) / 4.0,
    5: np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0,
    7: np.array([2.0, 7.0, 14.0, 18.0, 14.0, 7.0, 2.0]) / 64.0,
}


def subtract(mask: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """``mask`` without the pixels of ``negative`` (the negative prompt's mask)."""
    mask = _as_mask(mask, "mask")
    negative = _as_mask(negative, "negative")
    _check_same_shape(negative, "negative", mask.shape)
    return mask & ~negative


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Make every background region that does not reach the image border foreground.

    Background connectivity is 4 (scipy's default), so an 8-connected outline, such as a
    one-pixel diagonal line, is enough to enclose a hole.
    """
    return ndimage.binary_fill_holes(_as_mask(mask, "mask"))


# postprocess() has a parameter named fill_holes, which hides the function inside it.
_fill_holes = fill_holes


def expand(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate ``mask`` by ``pixels`` (0 to ``EXPAND_MAX``) with a Euclidean disk.

    A pixel becomes foreground when its centre is within Euclidean distance ``pixels`` of a
    foreground pixel's centre; 0 returns the mask unchanged. One distance transform does this in
    time independent of ``pixels``, where repeated 3x3 dilations would grow a diamond or square
    and cost ``pixels`` passes.
    """
    mask = _as_mask(mask, "mask")
    pixels = _int_in_range(pixels, "pixels", 0, EXPAND_MAX)
    if pixels == 0 or not mask.any():
        return mask.copy()

    # Only pixels within `pixels` of the mask's bounding box can change, so the (linear but not
    # free) transform runs on that window, not on the whole image.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom = max(rows[0] - pixels, 0), min(rows[-1] + pixels + 1, mask.shape[0])
    left, right = max(cols[0] - pixels, 0), min(cols[-1] + pixels + 1, mask.shape[1])
    window = mask[top:bottom, left:right]
    # distance_transform_edt measures each non-zero pixel's distance to the nearest zero, so the
    # mask is inverted to get every pixel's distance to the nearest foreground pixel.
    grown = ndimage.distance_transform_edt(~window) <= pixels

    out = mask.copy()
    out[top:bottom, left:right] = grown
    return out


def revert(mask: np.ndarray) -> np.ndarray:
    """Swap foreground and background."""
    return ~_as_mask(mask, "mask")


def blur(mask: np.ndarray, kernel: int) -> np.ndarray:
    """Gaussian-blur ``mask`` into a soft ``(H, W)`` uint8 matte (0 to 255).

    ``kernel`` is the kernel size in pixels, 0 to ``BLUR_MAX``, as cv2's
    ``GaussianBlur(mask, (kernel, kernel), 0)`` takes it: sigma is
    ``0.3 * ((kernel - 1) * 0.5 - 1) + 0.8``, the kernel has exactly ``kernel`` taps (OpenCV's
    fixed kernels for 3, 5 and 7) and the border is reflected without repeating the edge pixel
    (OpenCV's default, BORDER_REFLECT_101). Results agree with cv2 to within one grey level
    (cv2 rounds in fixed point). 0 means no blur: the mask as 0/255.

    fal documents ``blur_mask`` as an odd size, but clients send even values such as 10; an even
    ``kernel`` is rounded up to the next odd size (10 blurs as 11, 50 as 51).
    """
    mask = _as_mask(mask, "mask")
    kernel = _int_in_range(kernel, "kernel", 0, BLUR_MAX)
    matte = mask.astype(np.uint8) * np.uint8(255)
    if kernel <= 1:
        return matte
    if kernel % 2 == 0:
        kernel += 1

    taps = _gaussian_taps(kernel)
    # float32 halves the memory of float64 on large images; its error is far below 0.5 of 255.
    soft = matte.astype(np.float32)
    for axis in (0, 1):
        soft = ndimage.correlate1d(soft, taps, axis=axis, mode="mirror")
    return np.clip(np.rint(soft), 0, 255).astype(np.uint8)


def postprocess(
    mask: np.ndarray,
    *,
    negative_mask: np.ndarray | None = None,
    revert_mask: bool = False,
    fill_holes: bool = False,
    expand_mask: int = 0,
    blur_mask: int = 0,
) -> np.ndarray:
    """Apply the evf-sam options to ``mask``; return an ``(H, W)`` uint8 matte (0 to 255).

    The order is fixed:

    1. subtract ``negative_mask``: fal describes the negative prompt as subtracted from the
       prompt's result, so the options below work on that result. A consequence: a hole the
       negative mask cuts wholly inside the object is filled again by ``fill_holes``, and
       ``expand_mask`` grows back into the negative area;
    2. ``fill_holes``, before expanding, so that only the object's own holes are filled, not gaps
       between parts that the expansion happens to enclose;
    3. ``expand_mask``: grows the object, as the option's name says, not the background;
    4. ``revert_mask``: inverts the final object, so the expanded object becomes the (shrunk)
       background;
    5. ``blur_mask`` last: it softens the edges of the selection actually returned, and the soft
       matte is not a boolean mask any of the steps above could take.

    The return type is uint8 whether or not it is blurred (0/255 when ``blur_mask`` is 0), so
    callers handle one kind of matte.
    """
    mask = _as_mask(mask, "mask")
    # Validate every option before any work, so a bad value fails fast and names itself.
    expand_mask = _int_in_range(expand_mask, "expand_mask", 0, EXPAND_MAX)
    blur_mask = _int_in_range(blur_mask, "blur_mask", 0, BLUR_MAX)
    if negative_mask is not None:
        negative_mask = _as_mask(negative_mask, "negative_mask")
        _check_same_shape(negative_mask, "negative_mask", mask.shape)
        mask = subtract(mask, negative_mask)
    if fill_holes:
        mask = _fill_holes(mask)
    mask = expand(mask, expand_mask)
    if revert_mask:
        mask = revert(mask)
    return blur(mask, blur_mask)


def compose(image: np.ndarray | None, matte: np.ndarray, mask_only: bool) -> Image.Image:
    """Build the output image from ``matte`` (``(H, W)`` bool, or uint8 0 to 255).

    * ``mask_only=True``: the matte as a mode ``"L"`` image (``image`` may be None).
    * ``mask_only=False``: ``image`` (``(H, W, 3)`` uint8 RGB) as mode ``"RGBA"`` with the matte
      as alpha, transparent outside the mask. Fully transparent pixels are also made black, so an
      encoder that drops alpha (JPEG) shows the object on black rather than the whole picture,
      and PNGs compress better.
    """
    matte = np.asarray(matte)
    if matte.ndim != 2 or 0 in matte.shape:
        raise ValueError(f"matte must be a non-empty 2-D (H, W) array, got shape {matte.shape}")
    if matte.dtype == np.bool_:
        matte = matte.astype(np.uint8) * np.uint8(255)
    elif matte.dtype != np.uint8:
        raise ValueError(f"matte must be bool or uint8, got {matte.dtype}")

    if image is not None:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
        if image.shape[:2] != matte.shape:
            raise ValueError(
                f"matte shape {matte.shape} does not match image shape {image.shape[:2]}"
            )
    if mask_only:
        return Image.fromarray(np.ascontiguousarray(matte))
    if image is None:
        raise ValueError("image is needed when mask_only is False")

    rgb = np.where(matte[:, :, None] > 0, image, np.uint8(0))
    return Image.fromarray(np.dstack([rgb, matte]))


def _gaussian_taps(kernel: int) -> np.ndarray:
    if kernel in _SMALL_KERNELS:
        return _SMALL_KERNELS[kernel]
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2
    taps = np.exp(-(x * x) / (2 * sigma * sigma))
    return taps / taps.sum()


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"{name} must be a non-empty 2-D (H, W) array, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    # Integer masks (0/1 or 0/255) are common on disk; floats are refused because they are
    # usually logits or probabilities that need a threshold the caller should choose.
    if np.issubdtype(mask.dtype, np.integer):
        return mask != 0
    raise ValueError(f"{name} must be a bool or integer array, got {mask.dtype}")


def _check_same_shape(arr: np.ndarray, name: str, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise ValueError(f"{name} shape {arr.shape} does not match mask shape {shape}")


def _int_in_range(value: object, name: str, low: int, high: int) -> int:
    # bool is an Integral, but True as a pixel count is a caller bug, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)
