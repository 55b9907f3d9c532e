"""Decoding untrusted image bytes and encoding results."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from models.image_io import ImageDecodeError, decode_image, encode_image


def _save(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but that carries almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "jpg", "webp"])
def test_round_trip(rgb, fmt):
    data, content_type = encode_image(rgb, fmt)
    assert content_type == {"png": "image/png", "webp": "image/webp"}.get(fmt, "image/jpeg")
    out = decode_image(data)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if fmt == "png":
        assert np.array_equal(out, rgb)


def test_encode_pil_and_mask_arrays(rgb):
    data, ctype = encode_image(Image.fromarray(rgb), "PNG")
    assert ctype == "image/png" and np.array_equal(decode_image(data), rgb)

    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    data, _ = encode_image(mask, "png")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L"
        assert np.array_equal(np.asarray(im) == 255, mask)


def test_encode_rgba_as_jpeg_and_webp():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    for fmt in ("jpeg", "webp"):
        data, _ = encode_image(rgba, fmt)
        assert decode_image(data).shape == (8, 8, 3)


def test_encode_rejects_unknown_format_and_bad_arrays(rgb):
    with pytest.raises(ValueError, match="unsupported output format"):
        encode_image(rgb, "gif")
    with pytest.raises(ValueError):
        encode_image(rgb.astype(np.float32), "png")
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4, 2), np.uint8), "png")


def test_rgba_drops_alpha():
    arr = np.zeros((5, 7, 4), dtype=np.uint8)
    arr[..., :3] = (10, 20, 30)
    arr[..., 3] = 0
    out = decode_image(_save(Image.fromarray(arr), "PNG"))
    assert out.shape == (5, 7, 3)
    assert (out == (10, 20, 30)).all()


def test_greyscale_and_palette():
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    out = decode_image(_save(Image.fromarray(grey), "PNG"))
    assert out.shape == (5, 7, 3)
    assert all(np.array_equal(out[..., c], grey) for c in range(3))

    pal = Image.fromarray(grey).convert("P")
    pal.info["transparency"] = 0
    data = _save(pal, "GIF", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(data).shape == (5, 7, 3)


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    data = _save(Image.fromarray(arr), "PNG")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode.startswith("I")
    out = decode_image(data)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(cmyk, "JPEG"))
    assert out.shape == (4, 6, 3)
    assert out[..., 0].min() > 200 and out[..., 1].max() < 60


def test_exif_orientation_is_applied(rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _save(Image.fromarray(rgb), "JPEG", exif=exif)
    assert decode_image(data).shape == (60, 40, 3)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30],
    ids=["empty", "text", "png-signature-only"],
)
def test_garbage_is_rejected(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_truncated_image_is_rejected(rgb):
    data = _save(Image.fromarray(rgb), "PNG")
    with pytest.raises(ImageDecodeError, match="corrupt|truncated"):
        decode_image(data[: len(data) // 2])


def test_zero_size_is_rejected():
    with pytest.raises(ImageDecodeError):
        decode_image(_png_header_only(0, 10))


@pytest.mark.parametrize("side", [10_000, 100_000], ids=["over-limit", "over-pillow-bomb-limit"])
def test_oversized_header_is_rejected_before_decoding(side):
    data = _png_header_only(side, side)
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="too large|limit"):
        decode_image(data)
    assert time.perf_counter() - start < 1.0  # the pixels were never allocated


def test_max_pixels_parameter(rgb):
    data = _save(Image.fromarray(rgb), "PNG")
    with pytest.raises(ImageDecodeError, match="40x60|60x40"):
        decode_image(data, max_pixels=100)
    assert decode_image(data, max_pixels=40 * 60).shape == (40, 60, 3)


def test_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)
