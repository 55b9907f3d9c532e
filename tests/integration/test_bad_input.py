"""Bad input never becomes a 5xx: every case gets a clear 4xx whose body names the field, through the
sync run and through the queue, and the model replica keeps serving afterwards (DESIGN.md, "Errors
and bad input"; protocol reference §5, §12.5, §12.8).

Network safety: every URL below is loopback. Refused targets (127.0.0.1, localhost, ::1, and the
literal metadata IP) are refused by address before any connection is made.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
import zlib
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from tests.conftest import ALLOWED_HOST
from tests.helpers import LoopbackServer, png_bytes, png_data_uri

pytestmark = pytest.mark.integration

ENDPOINT = "fal-ai/sam2/image"
QUEUE_BASE = "fal-ai/sam2"
RETRIED_BY_CLIENTS = {408, 409, 429}  # the clients retry these: never for a permanent error
POINT = [{"x": 4, "y": 4, "label": 1}]


# ---- helpers -------------------------------------------------------------------------------

def _never_retryable_or_5xx(response: httpx.Response) -> None:
    assert response.status_code not in RETRIED_BY_CLIENTS, (
        f"{response.request.method} {response.request.url.path} answered {response.status_code}")
    assert response.status_code < 500, (
        f"{response.request.method} {response.request.url.path} answered {response.status_code}: "
        f"{response.read()[:500]!r}")


@pytest.fixture(scope="module")
def http(visus):
    # Every response on this client is checked: no 5xx, no 408/409/429, ever.
    with visus.client(event_hooks={"response": [_never_retryable_or_5xx]}) as client:
        yield client


def names_field(body, field: str) -> bool:
    """True when a fal/FastAPI error body points at `field` (a loc entry or the message)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return field in detail
    if isinstance(detail, list):
        return any(field in [str(p) for p in err.get("loc", [])] or field in str(err.get("msg", ""))
                   for err in detail if isinstance(err, dict))
    return False


def assert_field_error(response: httpx.Response, field: str, statuses=(422,)) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert names_field(body, field), f"error body does not name {field!r}: {body}"
    return body


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims width x height (no pixel data to speak of)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def closed_port(host: str) -> int:
    """A port on `host` with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"no such file"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def not_found_server():
    with LoopbackServer(_NotFound, host=ALLOWED_HOST) as server:
        yield server


@pytest.fixture(scope="module")
def image():
    return png_data_uri(32, 24)


# ---- errors found by the gateway's schema check (before any model work) -------------------

def test_malformed_json_body(http):
    r = http.post(f"/{ENDPOINT}", content=b'{"image_url": "x", ', headers={"Content-Type": "application/json"})
    assert_field_error(r, "body")
    assert r.json()["detail"][0]["type"] == "json_invalid"


def test_empty_body(http):
    assert_field_error(http.post(f"/{ENDPOINT}", content=b"", headers={"Content-Type": "application/json"}), "body")
    assert_field_error(http.post(f"/{ENDPOINT}"), "body")


def test_body_is_a_json_list(http, image):
    assert_field_error(http.post(f"/{ENDPOINT}", json=[{"image_url": image, "prompts": POINT}]), "body")


def test_body_is_not_json(http):
    r = http.post(f"/{ENDPOINT}", content=b"image_url=x", headers={"Content-Type": "text/plain"})
    assert_field_error(r, "body")


def test_missing_image_url(http):
    body = assert_field_error(http.post(f"/{ENDPOINT}", json={"prompts": POINT}), "image_url")
    assert body["detail"][0]["loc"] == ["body", "image_url"]
    assert body["detail"][0]["type"] == "missing"


def _schema_cases(image: str) -> dict[str, tuple[dict, list]]:
    """name -> (body, the loc the error must carry)."""
    return {
        "prompts as a string": ({"image_url": image, "prompts": "10,10"}, ["body", "prompts"]),
        "label 2": ({"image_url": image, "prompts": [{"x": 1, "y": 1, "label": 2}]},
                    ["body", "prompts", 0, "label"]),
        "x as 'abc'": ({"image_url": image, "prompts": [{"x": "abc", "y": 1}]}, ["body", "prompts", 0, "x"]),
        "box x_min > x_max": ({"image_url": image, "box_prompts": [{"x_min": 20, "y_min": 1, "x_max": 5,
                                                                    "y_max": 9}]}, ["body", "box_prompts", 0]),
        "output_format gif": ({"image_url": image, "prompts": POINT, "output_format": "gif"},
                              ["body", "output_format"]),
        "image_url a number": ({"image_url": 12, "prompts": POINT}, ["body", "image_url"]),
        "apply_mask not a bool": ({"image_url": image, "prompts": POINT, "apply_mask": "maybe"},
                                  ["body", "apply_mask"]),
    }


SCHEMA_CASES = list(_schema_cases("data:,").keys())


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_wrong_types_are_422_naming_the_field(http, image, case):
    body, loc = _schema_cases(image)[case]
    for path in (f"/{ENDPOINT}", f"/queue/{ENDPOINT}"):  # the queue refuses schema errors at submit
        r = http.post(path, json=body)
        detail = assert_field_error(r, str(loc[-1]))["detail"]
        assert any(err["loc"] == loc for err in detail), (path, detail)


def test_unknown_endpoint_is_404(http, image):
    payload = {"image_url": image, "prompts": POINT}
    for path in ("/fal-ai/no-such-model", "/fal-ai/sam2/no-such-variant", "/queue/fal-ai/no-such-model",
                 "/queue/fal-ai/sam2/no-such-variant", "/fal-ai/no-such-model/stream"):
        r = http.post(path, json=payload)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_unknown_request_id_is_404(http):
    rid = "00000000-0000-0000-0000-000000000000"
    for method, path in (("GET", f"/queue/{QUEUE_BASE}/requests/{rid}/status"),
                         ("GET", f"/queue/{QUEUE_BASE}/requests/{rid}"),
                         ("PUT", f"/queue/{QUEUE_BASE}/requests/{rid}/cancel")):
        assert http.request(method, path).status_code == 404, path


def test_bad_logs_flag_is_422(http):
    r = http.get(f"/queue/{QUEUE_BASE}/requests/x/status", params={"logs": "perhaps"})
    assert_field_error(r, "logs")


def test_body_over_the_size_limit_is_413(http, visus):
    limit = visus.config.limits.max_body_bytes
    # Announced by Content-Length: refused before the body is read.
    r = http.post(f"/{ENDPOINT}", content=b" " * (limit + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["detail"]

    # Chunked (no Content-Length): refused once the running total passes the limit.
    def chunks():
        for _ in range(limit // 2**20 + 1):
            yield b" " * 2**20
    for path in (f"/{ENDPOINT}", f"/queue/{ENDPOINT}"):
        r = http.post(path, content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413, (path, r.status_code, r.text)


# ---- errors found by the model deployment (file inputs, prompts against the image) ---------

def _model_cases(image: str, not_found_url: str, closed: int,
                 max_bytes: int = 8 * 2**20) -> dict[str, tuple[dict, str, tuple[int, ...]]]:
    """name -> (body, field the error must name, allowed statuses)."""
    over_max_bytes = "A" * (4 * (max_bytes // 3 + 4096))  # base64 decoding to more than max_bytes
    def with_image(url: str) -> dict:
        return {"image_url": url, "prompts": POINT}

    return {
        "corrupt image bytes": (with_image(data_uri(b"this is not an image" * 20)), "image_url", (422,)),
        "truncated png": (with_image(data_uri(png_bytes(32, 32)[:60])), "image_url", (422,)),
        "huge dimensions 30000x30000": (with_image(data_uri(png_claiming(30000, 30000))), "image_url", (413, 422)),
        "over max_image_pixels": (with_image(data_uri(png_claiming(5000, 5000))), "image_url", (413, 422)),
        "bad base64": (with_image("data:image/png;base64,@@not*base64!!"), "image_url", (422,)),
        "data URI without comma": (with_image("data:image/png;base64"), "image_url", (422,)),
        "empty data URI": (with_image("data:image/png;base64,"), "image_url", (422,)),
        "data URI over fetch max_bytes": (with_image("data:image/png;base64," + over_max_bytes),
                                          "image_url", (413,)),
        "ftp scheme": (with_image(f"ftp://{ALLOWED_HOST}/cat.png"), "image_url", (422,)),
        "file scheme": (with_image("file:///etc/passwd"), "image_url", (422,)),
        "not a URL": (with_image("just some words"), "image_url", (422,)),
        "unreachable allowed host": (with_image(f"http://{ALLOWED_HOST}:{closed}/cat.png"), "image_url", (422,)),
        "URL answering 404": (with_image(not_found_url), "image_url", (422,)),
        "own /files/ URL that does not exist": (with_image("/files/0123456789abcdef_missing.png"), "image_url",
                                                (422,)),
        "forbidden 127.0.0.1": (with_image(f"http://127.0.0.1:{closed}/x.png"), "image_url", (422,)),
        "forbidden localhost": (with_image(f"http://localhost:{closed}/x.png"), "image_url", (422,)),
        "forbidden [::1]": (with_image(f"http://[::1]:{closed}/"), "image_url", (422,)),
        "forbidden metadata IP": (with_image("http://169.254.169.254/latest/meta-data/"), "image_url", (422,)),
        "point outside the image": ({"image_url": image, "prompts": [{"x": 500, "y": 4, "label": 1}]},
                                    "prompts", (422,)),
        "negative point": ({"image_url": image, "prompts": [{"x": -1, "y": 4, "label": 1}]}, "prompts", (422,)),
        "box outside the image": ({"image_url": image, "box_prompts": [{"x_min": 100, "y_min": 100, "x_max": 200,
                                                                        "y_max": 200}]}, "box_prompts", (422,)),
        "no prompts": ({"image_url": image}, "prompts", (422,)),
        "empty prompt lists": ({"image_url": image, "prompts": [], "box_prompts": []}, "prompts", (422,)),
    }


MODEL_CASES = list(_model_cases("", "", 1).keys())


@pytest.fixture(scope="module")
def model_cases(visus, image, not_found_server):
    return _model_cases(image, f"{not_found_server.url}/missing.png", closed_port(ALLOWED_HOST),
                        visus.config.fetch.max_bytes)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_sync_run_refuses_bad_input_naming_the_field(http, model_cases, case):
    body, field, statuses = model_cases[case]
    r = http.post(f"/{ENDPOINT}", json=body)
    detail = assert_field_error(r, field, statuses)["detail"]
    assert detail[0]["loc"][:2] == ["body", field], detail
    assert r.headers["x-fal-request-id"]


def test_forbidden_targets_say_why(http, model_cases):
    for case in ("forbidden 127.0.0.1", "forbidden localhost", "forbidden [::1]", "forbidden metadata IP"):
        msg = http.post(f"/{ENDPOINT}", json=model_cases[case][0]).json()["detail"][0]["msg"]
        assert "not allowed" in msg, (case, msg)


def test_queue_reports_the_same_errors(http, model_cases):
    """Submit is 200; the status ends COMPLETED with error/error_type; the result endpoint returns
    the error status and body, the same the sync run gives."""
    submitted = {}
    for case, (body, _field, _statuses) in model_cases.items():
        r = http.post(f"/queue/{ENDPOINT}", json=body)
        assert r.status_code == 200, (case, r.text)
        submitted[case] = r.json()["request_id"]

    deadline = time.time() + 60
    for case, rid in submitted.items():
        body, field, statuses = model_cases[case]
        while True:
            status = http.get(f"/queue/{QUEUE_BASE}/requests/{rid}/status", params={"logs": "1"})
            assert status.status_code == 200, status.text
            view = status.json()
            if view["status"] == "COMPLETED":
                break
            assert view["status"] in ("IN_QUEUE", "IN_PROGRESS")
            assert time.time() < deadline, f"{case}: still {view['status']}"
            time.sleep(0.05)
        assert isinstance(view["error"], str) and field in view["error"], (case, view)
        assert isinstance(view["error_type"], str) and view["error_type"], (case, view)

        result = http.get(f"/queue/{QUEUE_BASE}/requests/{rid}")
        assert result.headers["x-fal-request-id"] == rid
        assert_field_error(result, field, statuses)
        sync = http.post(f"/{ENDPOINT}", json=body)
        assert (result.status_code, result.json()) == (sync.status_code, sync.json()), case


def test_status_stream_of_a_failed_job_ends_completed_with_the_error(http, model_cases):
    rid = http.post(f"/queue/{ENDPOINT}", json=model_cases["no prompts"][0]).json()["request_id"]
    events = []
    with http.stream("GET", f"/queue/{QUEUE_BASE}/requests/{rid}/status/stream", timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert events and events[-1]["status"] == "COMPLETED"
    assert "prompts" in events[-1]["error"]


def test_streaming_run_reports_errors_as_events_or_4xx(http, model_cases):
    r = http.post(f"/{ENDPOINT}/stream", json=model_cases["forbidden metadata IP"][0])
    if r.status_code == 200:
        data = [line for line in r.text.splitlines() if line.startswith("data:")]
        assert data and "image_url" in data[-1], r.text
    else:
        assert_field_error(r, "image_url")
    assert_field_error(http.post(f"/{ENDPOINT}/stream", json={"prompts": POINT}), "image_url")


# ---- the replica survived all of the above ------------------------------------------------

def test_replica_keeps_serving(http, image):
    for path in (f"/{ENDPOINT}", f"/{ENDPOINT}/stream"):
        r = http.post(path, json={"image_url": image, "prompts": POINT})
        assert r.status_code == 200, r.text
    r = http.post(f"/{ENDPOINT}", json={"image_url": image, "prompts": POINT,
                                        "box_prompts": [{"x_min": 2, "y_min": 2, "x_max": 20, "y_max": 20}]})
    assert r.status_code == 200, r.text
    out = r.json()["image"]
    assert (out["width"], out["height"]) == (32, 24)
    assert http.get(out["url"]).status_code == 200
