"""Segmind's `POST /v1/sam-v2-image` on the session's stack, with the official `segmind` SDK and httpx.

Raw JPEG answers (or base64 JSON), `x-remaining-credits` on every answer, 406 when a key's credits
are spent, only a 200 billed, and Segmind's `{"error": ...}` bodies with its status codes.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from segmind import SegmindClient, SegmindError

from tests.conftest import SEGMIND_KEYS
from tests.helpers import png_bytes

pytestmark = pytest.mark.integration

IMAGE = png_bytes(96, 64)
B64 = base64.b64encode(IMAGE).decode()


def post(visus, body: dict, key: str | None = "visus", **kw) -> httpx.Response:
    headers = {} if key is None else {"x-api-key": visus.key if key == "visus" else key}
    return httpx.post(f"{visus.url}/v1/sam-v2-image", json=body, headers=headers, timeout=120, **kw)


def jpeg(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return np.array(image)


def test_the_official_sdk_gets_the_jpeg(visus):
    client = SegmindClient(api_key=visus.key, base_url=f"{visus.url}/v1")
    response = client.run_sync("sam-v2-image", image=B64, prompt="a dog")
    assert response.headers["content-type"] == "image/jpeg"
    assert jpeg(response.content).shape == (64, 96, 3)
    assert float(response.headers["x-remaining-credits"]) >= 0
    with pytest.raises(SegmindError) as error:
        SegmindClient(api_key="wrong", base_url=f"{visus.url}/v1").run_sync("sam-v2-image", image=B64, prompt="x")
    assert error.value.status == 401


def test_coordinates_give_sam2s_mask(visus):
    """Points as Segmind's JSON strings; the mask equals fal-ai/sam2/image's for the same points."""
    body = {"image": B64, "coordinates": "[[30,20],[34,24]]", "remove_coordinates": "[5,5]", "overlay_mask": False}
    r = post(visus, body)
    assert r.status_code == 200, r.text
    ours = jpeg(r.content).astype(int) > 127
    with visus.client() as http:
        fal = http.post("/fal-ai/sam2/image", json={
            "image_url": "data:image/png;base64," + B64, "prompts": [
                {"x": 30, "y": 20, "label": 1}, {"x": 34, "y": 24, "label": 1}, {"x": 5, "y": 5, "label": 0}]})
        theirs = np.array(Image.open(io.BytesIO(http.get(fal.json()["image"]["url"]).content))) > 127
    ours = ours if ours.ndim == 2 else ours[..., 0]
    assert theirs.any()
    assert (ours & theirs).sum() / (ours | theirs).sum() > 0.95  # JPEG blurs the edges a little


def test_base64_answer_and_prompt_over_coordinates(visus):
    r = post(visus, {"image": B64, "prompt": "a dog", "coordinates": "[1,1]", "base64": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert jpeg(base64.b64decode(r.json()["image"])).shape == (64, 96, 3)


def test_credits_are_consumed_only_by_200s_and_406_when_spent(visus):
    key = "sg-two-credits"
    assert SEGMIND_KEYS[key] == 2
    bad = post(visus, {"image": "bm90IGFuIGltYWdl", "prompt": "a dog"}, key)  # base64 of "not an image"
    assert bad.status_code == 422 and bad.headers["x-remaining-credits"] == "2" and "image" in bad.json()["error"]
    first = post(visus, {"image": B64, "prompt": "a dog"}, key)
    second = post(visus, {"image": B64, "prompt": "a dog"}, key)
    assert [first.headers["x-remaining-credits"], second.headers["x-remaining-credits"]] == ["1", "0"]
    third = post(visus, {"image": B64, "prompt": "a dog"}, key)
    assert third.status_code == 406 and third.json() == {"error": "Not enough credits"}
    assert third.headers["x-remaining-credits"] == "0"
    assert post(visus, {"image": B64, "prompt": "a dog"}, "sg-no-credits").status_code == 406


@pytest.mark.parametrize("body, status, word", [
    ({"image": B64, "coordinates": "[1,2"}, 422, "coordinates"),
    ({"image": B64, "coordinates": "[[1,2],[3]]"}, 422, "coordinates"),
    ({"image": B64}, 422, "prompt"),
    ({"image": B64, "coordinates": "[500,5]"}, 422, "coordinates"),
    ({"image": B64, "prompt": "   "}, 422, "prompt"),
    ({"image": "%%%", "prompt": "a dog"}, 422, "image"),
    ({"prompt": "a dog"}, 422, "image"),
])
def test_bad_input_is_segmind_shaped(visus, body, status, word):
    r = post(visus, body, "sg-one-credit")
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and word in r.json()["error"]
    assert r.headers.get("x-remaining-credits") in (None, "1")  # nothing billed


def test_auth_methods_and_unknown_models(visus):
    assert post(visus, {"image": B64, "prompt": "a dog"}, key=None).status_code == 401
    assert post(visus, {"image": B64, "prompt": "a dog"}, key="nope").json() == {"error": "Missing or invalid x-api-key"}
    r = httpx.get(f"{visus.url}/v1/sam-v2-image", headers={"x-api-key": visus.key})
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.post(f"{visus.url}/v1/no-such-model", headers={"x-api-key": visus.key}, json={})
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(f"{visus.url}/v1/sam-v2-image", headers={"x-api-key": visus.key}, content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
