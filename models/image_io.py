"""Decode untrusted image bytes into RGB arrays, and encode images back to PNG/JPEG/WebP bytes."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Only plain raster formats: Pillow can also open formats such as EPS that hand the data to an
# external program (Ghostscript), which we never want to do with user uploads.
_ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_FORMAT_ALIASES = {"jpg": "jpeg"}


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message is meant for the API user."""


def _open_formats() -> list[str]:
    Image.init()
    return [f for f in _ALLOWED_FORMATS if f in Image.OPEN]


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode ``data`` to an ``(H, W, 3)`` uint8 RGB array, upright per its EXIF orientation.

    The pixel-count limit is checked from the header, before any pixel is decoded, so a small
    file that claims a huge canvas costs nothing. Alpha is dropped (the colour channels are kept
    as stored), as ``PIL.Image.convert("RGB")`` does in the reference pipelines. 16-bit and
    32-bit greyscale is scaled down to 8 bits instead of being clipped.
    """
    if not data:
        raise ImageDecodeError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels limit replaces Pillow's decompression-bomb heuristics.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_open_formats())
    except Image.DecompressionBombError:
        # Pillow's own hard limit (about 179M pixels) fired while reading the header.
        raise ImageDecodeError(
            f"the image is too large (above the limit of {max_pixels:,} pixels); "
            "please send a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "the data is not an image in a supported format "
            "(PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF) or it is corrupt"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on bad headers
        raise ImageDecodeError(f"the image header could not be read: {exc}") from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"the image is {width}x{height} ({width * height:,} pixels), "
            f"above the limit of {max_pixels:,} pixels; please send a smaller image"
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as exc:  # noqa: BLE001 - bad data raises OSError, SyntaxError, ...
        raise ImageDecodeError(f"the image data is corrupt or truncated: {exc}") from None

    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not reject a decodable image
        pass

    return _to_rgb_array(img)


def check_rgb_image(image: np.ndarray) -> np.ndarray:
    """``image`` as an array, or ValueError unless it is a non-empty ``(H, W, 3)`` uint8 RGB array."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("image has no pixels")
    return image


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_grey_to_rgb(img)
    if img.mode == "P" and "transparency" in img.info:
        # Pillow warns when palette transparency is dropped directly; going via RGBA is silent.
        img = img.convert("RGBA")
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageDecodeError(f"the image colour mode {img.mode!r} is not supported") from exc
    return np.array(img, dtype=np.uint8, copy=True)


def _high_depth_grey_to_rgb(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        # Float images are usually either [0, 1] or already in 8-bit units.
        if arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
    else:
        # 16-bit data: map 0..65535 onto 0..255 (Pillow's own convert would clip at 255).
        arr = arr.astype(np.float64) / 257.0
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def encode_image(img: Image.Image | np.ndarray, fmt: str) -> tuple[bytes, str]:
    """Encode ``img`` as ``fmt`` (png, jpeg/jpg or webp); return ``(bytes, content_type)``.

    Arrays may be ``(H, W)`` bool/uint8 or ``(H, W, 3|4)`` uint8. JPEG has no alpha channel, so
    transparent images are flattened to RGB first.
    """
    key = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if key not in _CONTENT_TYPES:
        raise ValueError(f"unsupported output format {fmt!r}; use one of png, jpeg, webp")
    if isinstance(img, np.ndarray):
        img = _array_to_pil(img)

    params: dict = {}
    if key == "jpeg":
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        params = {"quality": 95}
    elif key == "webp":
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if img.has_transparency_data else "RGB")
        params = {"quality": 95}
    elif img.mode == "1":
        img = img.convert("L")

    buf = io.BytesIO()
    img.save(buf, format=key.upper(), **params)
    return buf.getvalue(), _CONTENT_TYPES[key]


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or bool array, got {arr.dtype}")
    if arr.ndim == 2:
        return Image.fromarray(arr)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr))
    raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {arr.shape}")
