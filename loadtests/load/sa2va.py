"""Sa2VA sync runs, enabled only when the server serves them (``/openapi.json`` lists the route).

* ``sa2va sync fal-ai/sa2va/8b/image``: ``{prompt, image_url}`` on the test picture;
* ``sa2va sync fal-ai/sa2va/8b/video``: ``{prompt, video_url, num_frames_to_sample: 4}`` on the test video.

Both answer ``{"output": "<text with [SEG]>", "masks": [...]}``.
"""

from __future__ import annotations

from locust import task

from loadtests.load import inputs
from loadtests.load.common import VisusUser, check_json, requires


class Sa2vaUser(VisusUser):
    def sync_run(self, endpoint: str, body: bytes) -> None:
        with self.client.post(f"/{endpoint}", data=body, name=f"sa2va sync {endpoint}", catch_response=True) as r:
            check_json(r, "output", "masks")

    @task
    @requires("/fal-ai/sa2va/8b/image")
    def image(self):
        self.sync_run("fal-ai/sa2va/8b/image", inputs.SA2VA_IMAGE)

    @task
    @requires("/fal-ai/sa2va/8b/video")
    def video(self):
        self.sync_run("fal-ai/sa2va/8b/video", inputs.SA2VA_VIDEO)
