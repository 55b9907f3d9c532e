"""Segmind's v1 API: ``POST /v1/sam-v2-image`` with ``x-api-key``, answered with the JPEG itself.

* ``segmind points v1/sam-v2-image``: a point on the red square (SAM 2 only; weight 2);
* ``segmind text v1/sam-v2-image``: the prompt "red square" (Grounding DINO, then SAM 2; weight 1).

Every 200 costs a Segmind credit (``segmind.default_credits``, 1000 per key, kept across restarts):
raise it for long runs, e.g. ``VISUS_SEGMIND__DEFAULT_CREDITS=1000000 make serve``. A 406 (credits
spent) counts as a failure and says so.
"""

from __future__ import annotations

from locust import task

from loadtests.load import inputs, settings
from loadtests.load.common import VisusUser, requires

SLUG = "sam-v2-image"


class SegmindUser(VisusUser):
    default_headers = {"x-api-key": settings.api_key(), "Content-Type": "application/json"}

    def call(self, kind: str, body: bytes) -> None:
        with self.client.post(f"/v1/{SLUG}", data=body, name=f"segmind {kind} v1/{SLUG}", catch_response=True) as r:
            if r.status_code == 406:
                r.failure("406: the key's Segmind credits are spent; raise segmind.default_credits "
                          "(VISUS_SEGMIND__DEFAULT_CREDITS) and restart the server")
            elif r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
            elif not (r.headers.get("content-type") or "").startswith("image/jpeg") or not r.content:
                r.failure(f"expected a JPEG, got {r.headers.get('content-type')!r}")
            elif "x-remaining-credits" not in r.headers:
                r.failure("no x-remaining-credits header")

    @task(2)
    @requires(f"/v1/{SLUG}")
    def points(self):
        self.call("points", inputs.SEGMIND_POINTS)

    @task(1)
    @requires(f"/v1/{SLUG}")
    def text(self):
        self.call("text", inputs.SEGMIND_TEXT)
