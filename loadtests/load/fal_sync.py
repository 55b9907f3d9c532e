"""fal sync runs: ``POST /{endpoint}`` answered with the model output (image endpoints, cheap on the tiny models).

* ``sync fal-ai/sam2/image``: a point prompt on the test picture (weight 2);
* ``sync fal-ai/evf-sam``: the text prompt "the red square" (weight 1; EVF-SAM2 costs ten times more).
"""

from __future__ import annotations

from locust import task

from loadtests.load import inputs
from loadtests.load.common import VisusUser, check_json, requires


class FalSyncUser(VisusUser):
    weight = 2

    def sync_run(self, endpoint: str, body: bytes, output_key: str) -> None:
        with self.client.post(f"/{endpoint}", data=body, name=f"sync {endpoint}", catch_response=True) as r:
            check_json(r, output_key)

    @task(2)
    @requires("/fal-ai/sam2/image")
    def sam2_image(self):
        self.sync_run("fal-ai/sam2/image", inputs.SAM2_IMAGE, "image")

    @task(1)
    @requires("/fal-ai/evf-sam")
    def evf_sam(self):
        self.sync_run("fal-ai/evf-sam", inputs.EVF_SAM, "image")
