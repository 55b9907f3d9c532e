"""The stack comes up and serves a SAM 2 image request over real HTTP."""

from tests.helpers import png_data_uri


def test_sync_run_returns_a_mask_file(visus):
    with visus.client() as http:
        response = http.post("/fal-ai/sam2/image", json={"image_url": png_data_uri(64, 48),
                                                         "prompts": [{"x": 10, "y": 10, "label": 1}]})
        assert response.status_code == 200, response.text
        assert response.headers["x-fal-request-id"]
        image = response.json()["image"]
        assert (image["width"], image["height"], image["content_type"]) == (64, 48, "image/png")
        file = http.get(image["url"])
        assert file.status_code == 200 and file.headers["content-type"] == "image/png"
        assert len(file.content) == image["file_size"]
