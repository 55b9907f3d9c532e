"""Webhook payload shape and delivery against loopback receivers (fake sleep keeps it fast)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve.fetch_guard import FetchPolicy
from serve.webhooks import WebhookPolicy, backoff_delay, deliver_webhook, webhook_payload

LOOPBACK = FetchPolicy(allow=["127.0.0.0/8"], connect_timeout_s=2)
FAST = WebhookPolicy(attempts=5, first_backoff_s=1, max_backoff_s=8, timeout_s=5)


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((dict(self.headers), body))
        status, headers = self.server.answers.pop(0) if self.server.answers else (200, {})
        self.send_response(status)
        for name, value in {"Content-Length": "0", **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def receiver(*answers):
    """A loopback webhook receiver answering with the given (status, headers), then 200s."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    server.answers, server.received = list(answers), []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.received
    finally:
        server.shutdown()
        server.server_close()


class FakeSleep:
    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


def deliver(url, payload, fetch_policy=LOOPBACK, policy=FAST):
    sleep = FakeSleep()
    ok = asyncio.run(deliver_webhook(url, payload, fetch_policy, policy, sleep=sleep))
    return ok, sleep.delays


# -- payload ---------------------------------------------------------------------------------


def test_ok_payload():
    result = {"image": {"url": "http://x/files/a.png"}}
    assert webhook_payload("req-1", result, None, 200) == {
        "request_id": "req-1",
        "gateway_request_id": "req-1",
        "status": "OK",
        "payload": result,
        "error": None,
    }


def test_error_payload():
    detail = {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}
    body = webhook_payload("req-2", None, detail, 422)
    assert body["status"] == "ERROR"
    assert body["error"] == "Invalid status code: 422"
    assert body["payload"] == detail
    assert body["gateway_request_id"] == "req-2"


@pytest.mark.parametrize("result", [{"x": object()}, {"x": float("nan")}])
def test_unserialisable_payload(result):
    body = webhook_payload("req-3", result, None, 200)
    assert body["status"] == "OK"
    assert body["payload"] is None
    assert body["error"] is None
    assert body["payload_error"]
    json.dumps(body, allow_nan=False)


# -- delivery --------------------------------------------------------------------------------


def test_retries_until_delivered():
    payload = webhook_payload("req-9", {"ok": True}, None, 200)
    with receiver((500, {}), (502, {})) as (url, received):
        ok, delays = deliver(url, payload)
    assert ok
    assert len(received) == 3
    assert len(delays) == 2
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2  # jittered, doubling
    headers, body = received[-1]
    assert json.loads(body) == payload
    assert headers["X-Fal-Webhook-Request-Id"] == "req-9"
    assert headers["Content-Type"] == "application/json"


def test_client_error_not_retried():
    with receiver((400, {})) as (url, received):
        ok, delays = deliver(url, webhook_payload("r", {}, None, 200))
    assert not ok
    assert len(received) == 1 and delays == []


def test_rate_limit_honours_retry_after():
    with receiver((429, {"Retry-After": "3"}), (429, {"Retry-After": "600"})) as (url, received):
        ok, delays = deliver(url, webhook_payload("r", {}, None, 200))
    assert ok and len(received) == 3
    assert delays == [3.0, 8.0]  # the second is capped at max_backoff_s


def test_gives_up_after_attempts():
    policy = FAST.model_copy(update={"attempts": 3})
    with receiver(*[(503, {})] * 5) as (url, received):
        ok, delays = deliver(url, webhook_payload("r", {}, None, 200), policy=policy)
    assert not ok
    assert len(received) == 3 and len(delays) == 2


def test_connection_errors_are_retried():
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = FAST.model_copy(update={"attempts": 3})
    ok, delays = deliver(f"http://127.0.0.1:{port}/hook", {"request_id": "r"}, policy=policy)
    assert not ok and len(delays) == 2


def test_forbidden_target_not_attempted():
    with receiver() as (url, received):
        ok, delays = deliver(url, webhook_payload("r", {}, None, 200), fetch_policy=FetchPolicy())
        bad_scheme, _ = deliver("file:///etc/passwd", {"request_id": "r"})
    assert not ok and not bad_scheme
    assert received == [] and delays == []


def test_backoff_is_capped_and_jittered():
    policy = WebhookPolicy(first_backoff_s=1, max_backoff_s=60)
    for attempt in range(1, 12):
        ceiling = min(2 ** (attempt - 1), 60)
        assert ceiling / 2 <= backoff_delay(attempt, policy) <= ceiling
    assert backoff_delay(1, policy, "7") == 7
    assert backoff_delay(1, policy, "Wed, 21 Oct 2015 07:28:00 GMT") <= 1
