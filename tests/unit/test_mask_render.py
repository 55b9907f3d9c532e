"""Rendering boolean masks as images."""

from __future__ import annotations

import numpy as np
import pytest

from models.mask_render import OVERLAY_ALPHA, OVERLAY_COLOR, render_mask


@pytest.fixture
def mask() -> np.ndarray:
    m = np.zeros((6, 9), dtype=bool)
    m[1:4, 2:7] = True
    return m


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)


def test_plain_mask_is_white_on_black(mask):
    im = render_mask(mask)
    assert im.mode == "L" and im.size == (9, 6)
    arr = np.asarray(im)
    assert set(np.unique(arr).tolist()) == {0, 255}
    assert np.array_equal(arr == 255, mask)


def test_plain_mask_ignores_image(mask, image):
    assert np.array_equal(np.asarray(render_mask(mask, image)), np.asarray(render_mask(mask)))


def test_overlay_blends_only_inside_the_mask(mask, image):
    im = render_mask(mask, image, apply_mask=True)
    assert im.mode == "RGB" and im.size == (9, 6)
    out = np.asarray(im).astype(int)
    assert np.array_equal(out[~mask], image[~mask])
    expected = np.rint(image[mask] * (1 - OVERLAY_ALPHA) + np.array(OVERLAY_COLOR) * OVERLAY_ALPHA)
    assert np.abs(out[mask] - expected).max() <= 1


def test_overlay_custom_colour(mask, image):
    out = np.asarray(render_mask(mask, image, apply_mask=True, color=(255, 0, 0), alpha=1.0))
    assert (out[mask] == (255, 0, 0)).all()


def test_empty_and_full_masks(image):
    empty = np.zeros(image.shape[:2], bool)
    assert np.array_equal(np.asarray(render_mask(empty, image, apply_mask=True)), image)
    assert np.asarray(render_mask(~empty)).min() == 255


def test_accepts_uint8_masks(mask):
    assert np.array_equal(np.asarray(render_mask(mask.astype(np.uint8))) == 255, mask)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image=None), "needs the original image"),
        (dict(image=np.zeros((5, 9, 3), np.uint8)), "does not match"),
        (dict(image=np.zeros((6, 9), np.uint8)), "uint8"),
        (dict(image=np.zeros((6, 9, 3), np.uint8), alpha=1.5), "alpha"),
    ],
)
def test_overlay_errors(mask, kwargs, match):
    with pytest.raises(ValueError, match=match):
        render_mask(mask, apply_mask=True, **kwargs)


def test_mask_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        render_mask(np.zeros((2, 3, 1), bool))
