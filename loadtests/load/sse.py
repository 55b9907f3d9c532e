"""Server-sent events: a streaming run, and a queued job followed on its status stream.

* ``sse run fal-ai/sam2/video``: ``POST /fal-ai/sam2/video/stream``, reading every event (one per
  frame, with its masks) until the last one, the output; timed to the end of the stream;
* ``sse status-stream fal-ai/svd``: ``POST /queue/fal-ai/svd`` (``sse submit``), then ``GET
  .../status/stream?logs=1`` (one event per status change and "step k/N" log) until COMPLETED, then
  the result (``sse result``).

A stream counts as failed when it ends without its final event or that event is not the output.
"""

from __future__ import annotations

import time

from locust import task

from loadtests.load import inputs, settings
from loadtests.load.common import VisusUser, check_json, path_of, requires, sse_events

STATUS_STREAM = "/queue/{queue_base}/requests/{request_id}/status/stream"


class SseUser(VisusUser):
    def read_stream(self, r, start: float, is_final) -> None:
        """Read the event stream of response `r` to its end and judge it; times the whole stream."""
        if r.status_code != 200:
            r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
            return
        events, last = 0, None
        try:
            for event in sse_events(r):
                events, last = events + 1, event
                if time.perf_counter() - start > settings.JOB_TIMEOUT_S:
                    raise TimeoutError(f"stream still open after {settings.JOB_TIMEOUT_S:g} s")
        except Exception as exc:  # a broken stream is a failed request, not a crashed user
            r.failure(f"stream broke after {events} events: {type(exc).__name__}: {exc}")
            return
        finally:
            r.request_meta["response_time"] = (time.perf_counter() - start) * 1000
        if last is None or not is_final(last):
            r.failure(f"the stream ended after {events} events without its final one: {str(last)[:200]}")
        else:
            r.success()

    @task
    @requires("/fal-ai/sam2/video/stream")
    def stream_run(self):
        endpoint, start = "fal-ai/sam2/video", time.perf_counter()
        with self.client.post(f"/{endpoint}/stream", data=inputs.SAM2_VIDEO, name=f"sse run {endpoint}",
                              stream=True, catch_response=True, headers={"Accept": "text/event-stream"}) as r:
            self.read_stream(r, start, lambda event: "video" in event)

    @task
    @requires("/queue/fal-ai/svd", STATUS_STREAM)
    def status_stream(self):
        endpoint = "fal-ai/svd"
        with self.client.post(f"/queue/{endpoint}", data=inputs.SVD, name=f"sse submit {endpoint}",
                              catch_response=True) as r:
            submitted = check_json(r, "status_url", "response_url")
        if submitted is None:
            return
        start = time.perf_counter()
        with self.client.get(path_of(submitted["status_url"]) + "/stream?logs=1", name=f"sse status-stream {endpoint}",
                             stream=True, catch_response=True, headers={"Accept": "text/event-stream"}) as r:
            self.read_stream(r, start, lambda event: event.get("status") == "COMPLETED")
        with self.client.get(path_of(submitted["response_url"]), name=f"sse result {endpoint}",
                             catch_response=True) as r:
            check_json(r, "video")
