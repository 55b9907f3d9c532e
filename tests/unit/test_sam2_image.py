"""SAM 2.1 image segmentation on the randomly initialised micro checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.sam2_build import (
    infer_config,
    load_sam2,
    resolve_build_args,
    sam2_size_overrides,
)
from models.sam2_image import Sam2ImageSegmenter
from models.tiny import MICRO_OVERRIDES, SAM21_TINY_CONFIG, write_tiny_sam2

torch.set_num_threads(2)

BOX_A = (10.0, 10.0, 70.0, 60.0)
BOX_B = (80.0, 30.0, 140.0, 90.0)


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory) -> Path:
    return write_tiny_sam2(tmp_path_factory.mktemp("sam2"))


@pytest.fixture(scope="module")
def segmenter(micro_ckpt) -> Sam2ImageSegmenter:
    return Sam2ImageSegmenter.from_checkpoint(micro_ckpt)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    # Non-square on purpose: 100 rows x 150 columns.
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, size=(100, 150, 3), dtype=np.uint8)
    img[20:70, 30:100] = (200, 180, 40)
    return img


PROMPTS = {
    "point": dict(points=[(60.0, 45.0)], labels=[1]),
    "two_points": dict(points=[(60.0, 45.0), (5.0, 5.0)], labels=[1, 0]),
    "box": dict(boxes=[BOX_A]),
    "point_and_box": dict(points=[(40.0, 30.0)], labels=[1], boxes=[BOX_A]),
    "two_boxes": dict(boxes=[BOX_A, BOX_B]),
    "two_boxes_and_point": dict(points=[(60.0, 45.0)], labels=[1], boxes=[BOX_A, BOX_B]),
}


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_masks_are_nonempty_bool_in_image_shape(segmenter, image, name):
    mask = segmenter.segment(image, **PROMPTS[name])
    assert mask.shape == image.shape[:2]
    assert mask.dtype == np.bool_
    assert mask.any()


@pytest.mark.parametrize("size", [128, 256])
def test_image_size_override(micro_ckpt, image, size):
    seg = Sam2ImageSegmenter.from_checkpoint(micro_ckpt, image_size=size)
    assert seg.image_size == size == seg.model.image_size
    s = size
    assert seg._predictor._bb_feat_sizes == [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    for prompt in (PROMPTS["point"], PROMPTS["two_boxes"]):
        mask = seg.segment(image, **prompt)
        assert mask.shape == (100, 150) and mask.any()


def test_square_and_tall_images(segmenter):
    for shape in [(128, 128, 3), (150, 60, 3)]:
        img = np.full(shape, 90, dtype=np.uint8)
        mask = segmenter.segment(img, points=[(20, 30)], labels=[1])
        assert mask.shape == shape[:2] and mask.any()


def test_two_boxes_is_union_of_single_boxes(segmenter, image):
    both = segmenter.segment(image, boxes=[BOX_A, BOX_B])
    union = segmenter.segment(image, boxes=[BOX_A]) | segmenter.segment(image, boxes=[BOX_B])
    iou = (both & union).sum() / max((both | union).sum(), 1)
    assert iou > 0.99


def test_prompt_grouping(segmenter, image, monkeypatch):
    calls: list[dict] = []
    real_predict = segmenter._predictor.predict

    def spy(**kwargs):
        calls.append(kwargs)
        return real_predict(**kwargs)

    monkeypatch.setattr(segmenter._predictor, "predict", spy)

    def grouped(**prompt):
        calls.clear()
        segmenter.segment(image, **prompt)
        return [
            (
                None if c.get("point_coords") is None else len(c["point_coords"]),
                None if c.get("box") is None else np.shape(c["box"]),
                c["multimask_output"],
            )
            for c in calls
        ]

    assert grouped(**PROMPTS["point"]) == [(1, None, True)]
    assert grouped(**PROMPTS["two_points"]) == [(2, None, False)]
    assert grouped(**PROMPTS["box"]) == [(None, (4,), False)]
    assert grouped(**PROMPTS["point_and_box"]) == [(1, (4,), False)]
    assert grouped(**PROMPTS["two_boxes"]) == [(None, (2, 4), False)]
    assert grouped(**PROMPTS["two_boxes_and_point"]) == [(None, (2, 4), False), (1, None, True)]


def test_reversed_box_corners_are_accepted(segmenter, image):
    x0, y0, x1, y1 = BOX_A
    a = segmenter.segment(image, boxes=[BOX_A])
    b = segmenter.segment(image, boxes=[(x1, y1, x0, y0)])
    assert np.array_equal(a, b)


def test_predictor_is_reset_after_segment(segmenter, image):
    segmenter.segment(image, **PROMPTS["box"])
    assert segmenter._predictor._features is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "at least one point or box prompt is required"),
        (dict(points=[(1, 2)], labels=[]), "labels"),
        (dict(points=[(1, 2)], labels=[2]), "labels"),
        (dict(points=[(1, 2, 3)], labels=[1]), "shape"),
        (dict(boxes=[(1, 2, 3)]), "shape"),
        (dict(boxes=[(0, 0, float("nan"), 5)]), "finite"),
    ],
)
def test_bad_prompts_raise(segmenter, image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        segmenter.segment(image, **kwargs)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
    ],
)
def test_bad_images_raise(segmenter, bad):
    with pytest.raises(ValueError, match="uint8 RGB"):
        segmenter.segment(bad, points=[(1, 1)], labels=[1])


def test_checkpoint_is_official_layout(micro_ckpt):
    sd = torch.load(micro_ckpt, map_location="cpu", weights_only=True)["model"]
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    # SAM 2.1 extras over 2.0 (models.md 1.3).
    assert {"no_obj_embed_spatial", "obj_ptr_tpos_proj.weight"} <= sd.keys()
    bias = sd["sam_mask_decoder.pred_obj_score_head.layers.2.bias"]
    assert torch.all(bias == 10.0)
    n_params = sum(v.numel() for k, v in sd.items())
    assert 1_000_000 < n_params < 2_000_000

    side = json.loads(micro_ckpt.with_suffix(".json").read_text())
    assert side == {"config": SAM21_TINY_CONFIG, "overrides": MICRO_OVERRIDES, "image_size": 128}


def test_write_is_idempotent_and_deterministic(micro_ckpt, tmp_path):
    mtime = micro_ckpt.stat().st_mtime_ns
    assert write_tiny_sam2(micro_ckpt.parent) == micro_ckpt
    assert micro_ckpt.stat().st_mtime_ns == mtime

    other = write_tiny_sam2(tmp_path)
    a = torch.load(micro_ckpt, weights_only=True)["model"]
    b = torch.load(other, weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_sam2_with_explicit_config_ignores_sidecar(micro_ckpt, tmp_path):
    copy = tmp_path / "renamed.pt"
    copy.write_bytes(micro_ckpt.read_bytes())
    with pytest.raises(ValueError, match="cannot tell the SAM 2 config"):
        load_sam2(copy)
    model = load_sam2(copy, config=SAM21_TINY_CONFIG, overrides=MICRO_OVERRIDES, image_size=128)
    assert model.image_size == 128 and not model.training


def test_load_sam2_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sam2(tmp_path / "sam2.1_hiera_tiny.pt")


@pytest.mark.parametrize(
    "filename, config",
    [
        ("sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml"),
        ("sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml"),
        ("sam2.1_hiera_base_plus.pt", "configs/sam2.1/sam2.1_hiera_b+.yaml"),
        ("/x/y/sam2.1_hiera_large.pt", "configs/sam2.1/sam2.1_hiera_l.yaml"),
        ("sam2_hiera_large.pt", "configs/sam2/sam2_hiera_l.yaml"),
        ("sam2_hiera_b+.pt", "configs/sam2/sam2_hiera_b+.yaml"),
    ],
)
def test_infer_config(filename, config):
    assert infer_config(filename) == config


def test_resolve_build_args_precedence(tmp_path):
    ckpt = tmp_path / "custom.pt"
    ckpt.touch()
    ckpt.with_suffix(".json").write_text(
        json.dumps({"config": "configs/x.yaml", "overrides": ["++a=1"], "image_size": 128})
    )
    assert resolve_build_args(ckpt) == ("configs/x.yaml", ["++a=1", *sam2_size_overrides(128)])
    assert resolve_build_args(ckpt, overrides=["++b=2"], image_size=256) == (
        "configs/x.yaml",
        ["++a=1", "++b=2", *sam2_size_overrides(256)],
    )
    # An explicit config means the caller describes the architecture; the sidecar is ignored.
    assert resolve_build_args(ckpt, config="configs/y.yaml") == ("configs/y.yaml", [])


def test_size_overrides():
    assert sam2_size_overrides(256) == [
        "++model.image_size=256",
        "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
        "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
    ]
    for bad in (100, 0, -32, 256.0):
        with pytest.raises(ValueError):
            sam2_size_overrides(bad)


def test_official_catalog_matches_config_inference():
    from importlib.resources import files

    from models.sam2_checkpoints import OFFICIAL_SAM2, get_checkpoint_info

    assert sorted(OFFICIAL_SAM2) == [
        "sam2.1_hiera_base_plus", "sam2.1_hiera_large", "sam2.1_hiera_small", "sam2.1_hiera_tiny",
    ]
    for name, info in OFFICIAL_SAM2.items():
        assert info.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
        assert infer_config(info.filename) == info.config
        assert files("sam2").joinpath(info.config).is_file()
    assert get_checkpoint_info("sam2.1_hiera_tiny.pt") is OFFICIAL_SAM2["sam2.1_hiera_tiny"]
    with pytest.raises(KeyError, match="known"):
        get_checkpoint_info("sam3")
