"""fal's queue protocol over raw HTTP: submit, status flags, routing, SSE status stream, result, webhooks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import ALLOWED_HOST
from tests.helpers import LoopbackServer, png_data_uri

pytestmark = pytest.mark.integration

BODY = {"image_url": png_data_uri(48, 48), "prompts": [{"x": 10, "y": 12, "label": "1"}]}


def wait_completed(http, status_url: str, timeout_s: float = 60) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = http.get(status_url, params={"logs": "true"}).json()
        if status["status"] == "COMPLETED":
            return status
        time.sleep(0.05)
    raise AssertionError("request did not complete")


def test_submit_returns_the_full_object(visus):
    with visus.client() as http:
        response = http.post("/queue/fal-ai/sam2/image", json=BODY)
        assert response.status_code == 200
        data = response.json()
        assert set(data) >= {"status", "request_id", "gateway_request_id", "response_url", "status_url",
                             "cancel_url", "queue_position"}
        assert response.headers["x-fal-request-id"] == data["request_id"]
        rid = data["request_id"]
        # The sub-path is dropped: status/result/cancel live under {owner}/{alias}.
        assert data["status_url"] == f"{visus.url}/queue/fal-ai/sam2/requests/{rid}/status"
        assert data["status"] == "IN_QUEUE" and data["queue_position"] >= 0
        final = wait_completed(http, data["status_url"])
        assert final["metrics"]["inference_time"] >= 0
        result = http.get(data["response_url"])
        assert result.status_code == 200 and result.headers["x-fal-request-id"] == rid
        assert result.json()["image"]["width"] == 48


@pytest.mark.parametrize("flag,has_logs", [("1", True), ("true", True), ("True", True), ("0", False),
                                           ("false", False), ("False", False), (None, False)])
def test_status_logs_flag_spellings(visus, flag, has_logs):
    with visus.client() as http:
        data = http.post("/queue/fal-ai/sam2/image", json=BODY).json()
        wait_completed(http, data["status_url"])
        params = {} if flag is None else {"logs": flag}
        status = http.get(data["status_url"], params=params).json()
        assert status["status"] == "COMPLETED"
        assert "logs" in status  # the Python client needs the key even when null
        assert (status["logs"] is not None) == has_logs


def test_only_the_three_statuses_and_routing_by_owner_alias(visus):
    with visus.client() as http:
        data = http.post("/queue/fal-ai/sam2/image", json=BODY).json()
        rid = data["request_id"]
        statuses = set()
        for _ in range(400):
            status = http.get(f"/queue/fal-ai/sam2/requests/{rid}/status").json()
            statuses.add(status["status"])
            if status["status"] == "COMPLETED":
                break
            time.sleep(0.02)
        assert statuses <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"} and "COMPLETED" in statuses
        # Another owner/alias cannot see it.
        for base in ("fal-ai/evf-sam", "someone/sam2", "workflows/fal-ai/sam2"):
            assert http.get(f"/queue/{base}/requests/{rid}/status").status_code == 404
            assert http.get(f"/queue/{base}/requests/{rid}").status_code == 404
            assert http.put(f"/queue/{base}/requests/{rid}/cancel").status_code == 404
        assert http.get("/queue/fal-ai/sam2/requests/nope/status").json() == {"detail": "Request not found"}


def test_status_stream_sends_changes_with_new_logs_and_closes(visus):
    with visus.client() as http:
        data = http.post("/queue/fal-ai/sam2/image", json=BODY).json()
        events = []
        with http.stream("GET", data["status_url"] + "/stream", params={"logs": "1"},
                         headers={"Accept": "text/event-stream"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():  # ends only if the server closes the stream
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["status"] == "COMPLETED"
        assert [e["status"] for e in events].count("COMPLETED") == 1
        logs = [entry["message"] for e in events for entry in (e.get("logs") or [])]
        assert len(logs) == 1 and "segmented" in logs[0]  # each log line exactly once
        assert all(e["request_id"] == data["request_id"] for e in events)


def test_result_before_completion_is_400(visus):
    with visus.client() as http:
        data = http.post("/queue/fal-ai/sam2/image", json={**BODY, "image_url": png_data_uri(900, 700)}).json()
        early = http.get(data["response_url"])
        if early.status_code != 200:  # it may already be done on a fast machine
            assert early.status_code == 400 and "detail" in early.json()
        wait_completed(http, data["status_url"])
        assert http.get(data["response_url"]).status_code == 200
        again = http.put(data["cancel_url"])
        assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver that fails its first delivery with a 500, then accepts."""

    received: list = []
    calls = 0
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).calls += 1
            first = type(self).calls == 1
        if first:
            self.send_response(500)
            self.end_headers()
            return
        type(self).received.append((dict(self.headers), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_delivered_with_retries(visus):
    with LoopbackServer(_Receiver, host=ALLOWED_HOST) as receiver, visus.client() as http:
        hook = f"{receiver.url}/hook?a=1"
        ok = http.post("/queue/fal-ai/sam2/image", params={"fal_webhook": hook}, json=BODY).json()
        bad = http.post("/queue/fal-ai/sam2/image", params={"fal_webhook": hook},
                        json={**BODY, "image_url": "data:image/png;base64,AAAA"}).json()
        deadline = time.time() + 30
        while time.time() < deadline and len(_Receiver.received) < 2:
            time.sleep(0.1)
        by_id = {payload["request_id"]: (headers, payload) for headers, payload in _Receiver.received}
        assert _Receiver.calls >= 3  # one failed attempt was retried
        headers, payload = by_id[ok["request_id"]]
        assert payload["status"] == "OK" and payload["error"] is None
        assert payload["gateway_request_id"] == ok["request_id"]
        assert payload["payload"] == http.get(ok["response_url"]).json()
        _, failed = by_id[bad["request_id"]]
        assert failed["status"] == "ERROR" and "422" in failed["error"]
        assert failed["payload"]["detail"][0]["loc"] == ["body", "image_url"]


def test_webhook_must_be_an_http_url(visus):
    with visus.client() as http:
        response = http.post("/queue/fal-ai/sam2/image", params={"fal_webhook": "ftp://x/y"}, json=BODY)
        assert response.status_code == 422 and "fal_webhook" in response.text
