"""evf-sam mask post-processing: each option against masks whose answer is known, and the order."""

from __future__ import annotations

import numpy as np
import pytest

from models import mask_postprocess as mp


def disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def within(shape: tuple[int, int], mask: np.ndarray, radius: int) -> np.ndarray:
    """Brute force: pixels whose centre is within ``radius`` of some foreground pixel's centre."""
    yy, xx = np.indices(shape)
    fy, fx = np.nonzero(mask)
    d2 = (yy[..., None] - fy) ** 2 + (xx[..., None] - fx) ** 2
    return (d2 <= radius**2).any(axis=-1)


def impulse(size: int = 31) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[size // 2, size // 2] = True
    return m


# --- subtract ---------------------------------------------------------------------------------


def test_subtract_removes_exactly_the_overlap():
    mask = np.zeros((10, 12), bool)
    mask[2:8, 2:8] = True
    negative = np.zeros_like(mask)
    negative[5:10, 6:12] = True
    out = mp.subtract(mask, negative)
    assert out.dtype == bool
    assert not (out & negative).any()
    assert np.array_equal(out | (mask & negative), mask)
    assert out.sum() == 36 - 3 * 2


def test_subtract_disjoint_negative_changes_nothing():
    mask = np.zeros((6, 6), bool)
    mask[:3] = True
    assert np.array_equal(mp.subtract(mask, ~mask), mask & ~(~mask))
    assert np.array_equal(mp.subtract(mask, np.zeros_like(mask)), mask)


# --- fill_holes -------------------------------------------------------------------------------


def test_fill_holes_turns_a_ring_into_the_full_disk():
    shape, centre = (41, 41), (20, 20)
    ring = disk(shape, centre, 15) & ~disk(shape, centre, 9)
    assert np.array_equal(mp.fill_holes(ring), disk(shape, centre, 15))


def test_fill_holes_keeps_background_that_reaches_the_border():
    # A "U" open at the top edge: its inside touches the border, so it is not a hole.
    u = np.zeros((10, 10), bool)
    u[:8, 2] = u[:8, 7] = True
    u[7, 2:8] = True
    assert np.array_equal(mp.fill_holes(u), u)


def test_fill_holes_does_not_modify_its_input():
    ring = disk((21, 21), (10, 10), 8) & ~disk((21, 21), (10, 10), 4)
    before = ring.copy()
    mp.fill_holes(ring)
    assert np.array_equal(ring, before)


# --- expand -----------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1, 2, 3, 7, 20])
def test_expand_single_pixel_gives_the_euclidean_disk(radius):
    shape, centre = (61, 61), (30, 30)
    m = np.zeros(shape, bool)
    m[centre] = True
    assert np.array_equal(mp.expand(m, radius), disk(shape, centre, radius))


def test_expand_radius_one_is_the_cross_not_the_square():
    out = mp.expand(impulse(5), 1)
    assert out.sum() == 5 and not out[1, 1]


def test_expand_at_the_maximum_near_a_corner():
    # The corner pixel's disk of radius 100 is mostly outside the image: the window crop must
    # clip at the border and still give the exact quarter-disk.
    shape = (120, 90)
    m = np.zeros(shape, bool)
    m[0, 0] = True
    assert np.array_equal(mp.expand(m, mp.EXPAND_MAX), disk(shape, (0, 0), mp.EXPAND_MAX))


def test_expand_scattered_pixels_is_the_union_of_disks():
    rng = np.random.default_rng(4)
    shape = (30, 40)
    m = rng.random(shape) < 0.01
    m[3, 37] = True  # at least one, and one near an edge
    for radius in (2, 5):
        assert np.array_equal(mp.expand(m, radius), within(shape, m, radius))


def test_expand_zero_and_empty_are_unchanged_copies():
    m = impulse(7)
    out = mp.expand(m, 0)
    assert np.array_equal(out, m) and out is not m
    empty = np.zeros((7, 9), bool)
    assert not mp.expand(empty, 5).any()


@pytest.mark.parametrize("pixels", [-1, mp.EXPAND_MAX + 1, 2.5, True, "3", None])
def test_expand_rejects_bad_pixel_counts(pixels):
    with pytest.raises(ValueError, match="pixels"):
        mp.expand(impulse(5), pixels)


def test_expand_accepts_numpy_integers():
    assert np.array_equal(mp.expand(impulse(9), np.int64(2)), mp.expand(impulse(9), 2))


# --- revert -----------------------------------------------------------------------------------


def test_revert_inverts_and_twice_is_identity():
    rng = np.random.default_rng(1)
    m = rng.random((9, 13)) < 0.4
    assert np.array_equal(mp.revert(m), ~m)
    assert np.array_equal(mp.revert(mp.revert(m)), m)


# --- blur -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [3, 11, 25, 50])
def test_blur_of_uniform_masks_stays_uniform(kernel):
    ones = np.ones((20, 30), bool)
    out = mp.blur(ones, kernel)
    assert out.dtype == np.uint8 and out.shape == ones.shape
    assert (out == 255).all()
    assert (mp.blur(~ones, kernel) == 0).all()


@pytest.mark.parametrize("kernel", [5, 15])
def test_blur_of_a_symmetric_mask_is_symmetric(kernel):
    m = disk((41, 41), (20, 20), 9)
    m[20, 2:39] = True  # a horizontal bar through the centre: lr and ud, not transpose
    out = mp.blur(m, kernel)
    assert np.array_equal(out, out[:, ::-1])
    assert np.array_equal(out, out[::-1, :])
    square = np.zeros((41, 41), bool)
    square[12:29, 12:29] = True
    sq = mp.blur(square, kernel)
    assert np.array_equal(sq, sq.T) and np.array_equal(sq, sq[::-1, ::-1])


@pytest.mark.parametrize("even", [2, 4, 10, 30])
def test_blur_even_kernel_rounds_up_to_the_next_odd(even):
    rng = np.random.default_rng(even)
    m = rng.random((25, 33)) < 0.3
    assert np.array_equal(mp.blur(m, even), mp.blur(m, even + 1))
    assert not np.array_equal(mp.blur(m, even), mp.blur(m, even - 1))


def test_blur_zero_and_one_are_the_plain_matte():
    m = disk((9, 9), (4, 4), 3)
    for kernel in (0, 1):
        out = mp.blur(m, kernel)
        assert out.dtype == np.uint8
        assert np.array_equal(out, m.astype(np.uint8) * 255)


def test_blur_uses_opencvs_fixed_kernel_for_size_3():
    # cv2.getGaussianKernel(3, 0) is [1/4, 1/2, 1/4], not the sigma formula's taps.
    out = mp.blur(impulse(7), 3)
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = np.outer([1, 2, 1], [1, 2, 1]) / 16 * 255
    assert np.array_equal(out, np.rint(expected).astype(np.uint8))


@pytest.mark.parametrize("kernel", [9, 21])
def test_blur_impulse_response_is_the_k_tap_gaussian_with_opencvs_sigma(kernel):
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = np.arange(kernel) - (kernel - 1) / 2
    taps = np.exp(-(x**2) / (2 * sigma**2))
    taps /= taps.sum()
    size = kernel + 10
    expected = np.zeros((size, size))
    lo = (size - kernel) // 2
    expected[lo : lo + kernel, lo : lo + kernel] = np.outer(taps, taps) * 255
    out = mp.blur(impulse(size), kernel).astype(int)
    assert np.abs(out - np.rint(expected)).max() <= 1


def test_blur_kernel_has_exactly_k_taps():
    # A full-width line blurred with k=9 (sigma 1.7) has the 1-D taps times 255 as its vertical
    # profile. An untruncated Gaussian would put 0.79 (rounded: 1) five rows away, and 59.8
    # rather than 60.3 in the middle, so this pins the truncation and the renormalisation.
    m = np.zeros((21, 15), bool)
    m[10] = True
    out = mp.blur(m, 9)
    profile = [0] * 6 + [4, 13, 30, 51, 60, 51, 30, 13, 4] + [0] * 6
    assert (out == np.array(profile, np.uint8)[:, None]).all()


def test_blur_border_reflects_without_repeating_the_edge_pixel():
    # Column 0 on, the rest off. OpenCV's default border (reflect-101) mirrors column 1 into
    # column -1, giving 0.5 * 255 on the edge; repeating the edge pixel would give 0.75 * 255.
    m = np.zeros((5, 6), bool)
    m[:, 0] = True
    out = mp.blur(m, 3)
    assert (out[:, 0] == 128).all() and (out[:, 1] == 64).all() and (out[:, 2] == 0).all()


@pytest.mark.parametrize("kernel", [-1, mp.BLUR_MAX + 1, 3.0, False, None])
def test_blur_rejects_bad_kernels(kernel):
    with pytest.raises(ValueError, match="kernel"):
        mp.blur(impulse(5), kernel)


# --- postprocess ------------------------------------------------------------------------------


def test_postprocess_defaults_give_the_plain_matte():
    m = disk((15, 15), (7, 7), 5)
    out = mp.postprocess(m)
    assert out.dtype == np.uint8
    assert np.array_equal(out, m.astype(np.uint8) * 255)


def test_postprocess_reverts_after_expanding():
    shape, centre = (21, 21), (10, 10)
    m = np.zeros(shape, bool)
    m[centre] = True
    out = mp.postprocess(m, expand_mask=3, revert_mask=True)
    # Expanding first and then inverting leaves a disk-shaped hole; the other order would have
    # grown the background over the single pixel and returned all 255.
    assert np.array_equal(out == 255, ~disk(shape, centre, 3))


def test_postprocess_fills_holes_before_expanding():
    # A "C": a ring with a 3 px gap on the right. Its inside reaches the border through the gap,
    # so fill_holes leaves it alone; expanding by 2 then closes the gap and encloses a hole,
    # which stays open because filling already happened.
    shape, centre = (31, 31), (15, 15)
    c = disk(shape, centre, 10) & ~disk(shape, centre, 6)
    c[14:17, 15:] = False
    expanded = mp.expand(c, 2)
    assert not np.array_equal(mp.fill_holes(expanded), expanded)  # the order matters here
    out = mp.postprocess(c, fill_holes=True, expand_mask=2)
    assert np.array_equal(out == 255, expanded)


def test_postprocess_subtracts_the_negative_mask_first():
    # The negative mask cuts a hole wholly inside the object; fill_holes then fills it again,
    # the documented consequence of subtracting before the other options.
    shape = (21, 21)
    m = disk(shape, (10, 10), 8)
    negative = disk(shape, (10, 10), 3)
    assert np.array_equal(mp.postprocess(m, negative_mask=negative) == 255, m & ~negative)
    assert np.array_equal(mp.postprocess(m, negative_mask=negative, fill_holes=True) == 255, m)
    # ...and expand grows back into it.
    grown = mp.postprocess(m, negative_mask=negative, expand_mask=2) == 255
    assert np.array_equal(grown, mp.expand(m & ~negative, 2))
    assert (grown & negative).any()


def test_postprocess_blurs_last():
    rng = np.random.default_rng(7)
    m = rng.random((30, 30)) < 0.5
    negative = rng.random((30, 30)) < 0.2
    out = mp.postprocess(
        m, negative_mask=negative, fill_holes=True, expand_mask=2, revert_mask=True, blur_mask=7
    )
    expected = mp.blur(mp.revert(mp.expand(mp.fill_holes(mp.subtract(m, negative)), 2)), 7)
    assert np.array_equal(out, expected)
    assert 0 < np.count_nonzero((out > 0) & (out < 255))  # a soft matte


def test_postprocess_even_blur_rounds_up():
    m = disk((25, 25), (12, 12), 7)
    assert np.array_equal(mp.postprocess(m, blur_mask=10), mp.postprocess(m, blur_mask=11))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(expand_mask=mp.EXPAND_MAX + 1), "expand_mask"),
        (dict(expand_mask=-3), "expand_mask"),
        (dict(blur_mask=mp.BLUR_MAX + 1), "blur_mask"),
        (dict(blur_mask=1.5), "blur_mask"),
        (dict(negative_mask=np.zeros((5, 6), bool)), "negative_mask"),
        (dict(negative_mask=np.zeros((6, 6), np.float32)), "negative_mask"),
    ],
)
def test_postprocess_names_the_bad_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mp.postprocess(np.zeros((6, 6), bool), **kwargs)


# --- compose ----------------------------------------------------------------------------------


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)


def test_compose_mask_only_is_the_matte_in_l_mode(image):
    m = np.zeros((6, 9), bool)
    m[1:4, 2:7] = True
    im = mp.compose(image, m, mask_only=True)
    assert im.mode == "L" and im.size == (9, 6)
    assert np.array_equal(np.asarray(im), m.astype(np.uint8) * 255)
    soft = np.arange(54, dtype=np.uint8).reshape(6, 9) * 4
    assert np.array_equal(np.asarray(mp.compose(None, soft, mask_only=True)), soft)


def test_compose_masked_image_is_rgba_with_the_matte_as_alpha(image):
    matte = np.zeros((6, 9), np.uint8)
    matte[1:4, 2:7] = 255
    matte[4, 2:7] = 100  # a soft edge keeps its colour
    out = np.asarray(mp.compose(image, matte, mask_only=False))
    assert out.shape == (6, 9, 4)
    assert np.array_equal(out[..., 3], matte)
    inside = matte > 0
    assert np.array_equal(out[..., :3][inside], image[inside])
    assert (out[..., :3][~inside] == 0).all()


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((5, 9, 3), np.uint8), np.zeros((6, 9), bool), False), "does not match"),
        ((np.zeros((6, 9, 3), np.uint8), np.zeros((6, 9), bool), True), None),
        ((np.zeros((6, 9), np.uint8), np.zeros((6, 9), bool), False), "image"),
        ((np.zeros((6, 9, 3), np.float32), np.zeros((6, 9), bool), False), "image"),
        ((np.zeros((6, 9, 3), np.uint8), np.zeros((6, 9), np.float32), False), "matte"),
        ((np.zeros((6, 9, 3), np.uint8), np.zeros((6, 9, 1), np.uint8), False), "matte"),
        ((None, np.zeros((6, 9), bool), False), "image"),
    ],
)
def test_compose_errors(args, match):
    if match is None:
        mp.compose(*args)  # the well-formed control case
        return
    with pytest.raises(ValueError, match=match):
        mp.compose(*args)


# --- input masks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [np.zeros((3, 4, 1), bool), np.zeros((0, 4), bool), np.zeros((3, 4), np.float64)]
)
@pytest.mark.parametrize(
    "call",
    [
        lambda m: mp.fill_holes(m),
        lambda m: mp.expand(m, 1),
        lambda m: mp.revert(m),
        lambda m: mp.blur(m, 3),
        lambda m: mp.postprocess(m),
        lambda m: mp.subtract(m, np.zeros((3, 4), bool)),
    ],
)
def test_bad_masks_are_refused_by_name(call, bad):
    with pytest.raises(ValueError, match="mask"):
        call(bad)


def test_subtract_names_the_negative():
    with pytest.raises(ValueError, match="negative"):
        mp.subtract(np.zeros((3, 4), bool), np.zeros((4, 3), bool))


def test_integer_masks_are_accepted():
    m = disk((11, 11), (5, 5), 4)
    assert np.array_equal(mp.revert(m.astype(np.uint8) * 255), ~m)
    assert np.array_equal(mp.expand(m.astype(np.int32), 1), mp.expand(m, 1))
