"""`fal-ai/evf-sam` on the session's stack, with the tiny EVF-SAM2 and Grounding DINO checkpoints.

The served mask must be the one the EVF-SAM2 model gives in this process for the same checkpoint,
image and prompt; every option changes the output the way models/mask_postprocess.py says (its
unit tests check the operations themselves on known answers).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.evf_sam2 import EvfSam2
from models.mask_postprocess import postprocess
from tests.helpers import data_uri, png_bytes

pytestmark = pytest.mark.integration

PROMPT = "the red ball on the left"


@pytest.fixture(scope="module")
def picture() -> bytes:
    return png_bytes(96, 64)


def served(http, picture: bytes, **fields) -> tuple[np.ndarray, dict]:
    r = http.post("/fal-ai/evf-sam", json={"prompt": PROMPT, "image_url": data_uri(picture, "image/png"), **fields})
    assert r.status_code == 200, r.text
    out = r.json()["image"]
    return np.array(Image.open(io.BytesIO(http.get(out["url"]).content))), out


def test_served_mask_is_the_models_mask(visus, picture):
    model = EvfSam2.from_pretrained(visus.config.resolved_model_dir / "evf_sam2" / "evf-sam2-multitask")
    image = np.array(Image.open(io.BytesIO(picture)).convert("RGB"))
    expected = model.predict(image, PROMPT).mask
    assert expected.any() and not expected.all(), "the tiny model must give a partial mask, or this could not fail"
    with visus.client() as http:
        mask, out = served(http, picture)
        assert out["content_type"] == "image/png" and (out["width"], out["height"]) == (96, 64)
        assert np.array_equal(mask > 127, expected)

        semantic, _ = served(http, picture, semantic_type=True)
        assert np.array_equal(semantic > 127, model.predict(image, PROMPT, semantic=True).mask)


def test_options_change_the_mask_as_documented(visus, picture):
    with visus.client() as http:
        plain, _ = served(http, picture)
        reverted, _ = served(http, picture, revert_mask=True)
        assert np.array_equal(reverted, 255 - plain)
        expanded, _ = served(http, picture, expand_mask=3, fill_holes=True)
        assert np.array_equal(expanded, postprocess(plain > 127, fill_holes=True, expand_mask=3))
        even, _ = served(http, picture, blur_mask=10)
        odd, _ = served(http, picture, blur_mask=11)
        assert np.array_equal(even, odd) and len(np.unique(odd)) > 2  # a soft matte
        nothing, _ = served(http, picture, negative_prompt=PROMPT)  # its own mask subtracted
        assert not nothing.any()

        masked, out = served(http, picture, mask_only=False)
        assert masked.shape == (64, 96, 4)  # RGBA: transparent outside the mask
        assert np.array_equal(masked[..., 3], plain)


def test_grounding_dino_path(visus, picture):
    with visus.client() as http:
        mask, out = served(http, picture, use_grounding_dino=True, prompt="a dog")
        assert (out["width"], out["height"]) == (96, 64) and mask.any()
        none, _ = served(http, picture, use_grounding_dino=True, prompt="a dog", negative_prompt="a dog")
        assert not none.any()


@pytest.mark.parametrize("field, value, status", [
    ("blur_mask", 51, 422), ("blur_mask", -1, 422), ("expand_mask", 101, 422), ("prompt", "", 422),
    ("prompt", "ball " * 2000, 422), ("image_url", "data:image/png;base64,AAAA", 422),
])
def test_bad_input_names_the_field(visus, picture, field, value, status):
    body = {"prompt": PROMPT, "image_url": data_uri(picture, "image/png"), field: value}
    with visus.client() as http:
        r = http.post("/fal-ai/evf-sam", json=body)
    assert r.status_code == status, r.text
    assert field in str(r.json()["detail"])
