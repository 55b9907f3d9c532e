"""fal's queue flow on the long-running endpoints: ``POST /queue/{endpoint}``, poll ``status_url``
every ``LOADTEST_POLL_S`` until COMPLETED, ``GET response_url``.

* ``fal-ai/sam2/video``: one point on frame 0 of the 16-frame test video, masks overlaid (weight 2);
* ``fal-ai/svd``: the test picture to 8 frames in 4 steps (tiny SVD; weight 1).

Requests: ``queue submit|status|result <endpoint>`` and the whole job as ``queue job <endpoint>``
(type ``JOB``: submit to result, what a client waits).
"""

from __future__ import annotations

from locust import task

from loadtests.load import inputs
from loadtests.load.common import VisusUser, queue_job, requires


class FalQueueUser(VisusUser):
    @task(2)
    @requires("/queue/fal-ai/sam2/video")
    def sam2_video(self):
        queue_job(self, "queue", "fal-ai/sam2/video", inputs.SAM2_VIDEO, "video")

    @task(1)
    @requires("/queue/fal-ai/svd")
    def svd(self):
        queue_job(self, "queue", "fal-ai/svd", inputs.SVD, "video")
