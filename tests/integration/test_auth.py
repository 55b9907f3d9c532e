"""Who may call what: API keys, app tokens (`/rest/tokens/`) and CDN tokens (`/rest/storage/auth/token`).

Protocol reference §1, §6.1, §7.4, §8.2, §12.13, §12.15.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import png_bytes, png_data_uri

pytestmark = pytest.mark.integration

ENDPOINT = "fal-ai/sam2/image"
QUEUE_BASE = "fal-ai/sam2"
POINT = [{"x": 4, "y": 4, "label": 1}]

BAD_AUTHORIZATION = {
    "no header": None,
    "wrong key": "Key wrong-id:wrong-secret",
    "random bearer": f"Bearer {secrets.token_urlsafe(24)}",
    "Key with empty value": "Key",
    "bare key, no scheme": "test-key-id:test-key-secret",
    "right key, Bearer scheme": "Bearer test-key-id:test-key-secret",
}


@pytest.fixture(scope="module")
def http(visus):
    with visus.client() as client:
        yield client


@pytest.fixture(scope="module")
def anon(visus):
    with httpx.Client(base_url=visus.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def image():
    return png_data_uri(32, 32)


@pytest.fixture(scope="module")
def request_id(http, image):
    r = http.post(f"/queue/{ENDPOINT}", json={"image_url": image, "prompts": POINT})
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def protected_calls(image: str, request_id: str) -> dict[str, tuple[str, str, dict]]:
    """name -> (method, path, httpx kwargs); each needs `Authorization: Key <key>`."""
    run_body = {"json": {"image_url": image, "prompts": POINT}}
    base = f"/queue/{QUEUE_BASE}/requests/{request_id}"
    return {
        "sync run": ("POST", f"/{ENDPOINT}", run_body),
        "sync run, invalid body": ("POST", f"/{ENDPOINT}", {"json": {"nothing": True}}),
        "stream run": ("POST", f"/{ENDPOINT}/stream", run_body),
        "submit": ("POST", f"/queue/{ENDPOINT}", run_body),
        "status": ("GET", f"{base}/status", {}),
        "status stream": ("GET", f"{base}/status/stream", {}),
        "result": ("GET", base, {}),
        "cancel": ("PUT", f"{base}/cancel", {}),
        "storage initiate": ("POST", "/rest/storage/upload/initiate?storage_type=fal-cdn-v3",
                             {"json": {"content_type": "image/png", "file_name": "a.png"}}),
        "storage initiate multipart": ("POST", "/rest/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
                                       {"json": {"content_type": "image/png", "file_name": "a.png"}}),
        "cdn token": ("POST", "/rest/storage/auth/token?storage_type=fal-cdn-v3", {"json": {}}),
        "tokens": ("POST", "/rest/tokens/", {"json": {"allowed_apps": ["sam2"]}}),
        "cdn upload": ("POST", "/cdn/files/upload", {"content": b"abc", "headers": {"Content-Type": "text/plain"}}),
        "cdn multipart": ("POST", "/cdn/files/upload/multipart", {"headers": {"Content-Type": "text/plain"}}),
        "unknown endpoint": ("POST", "/fal-ai/no-such-model", run_body),
    }


CALLS = list(protected_calls("", "").keys())


@pytest.mark.parametrize("auth", list(BAD_AUTHORIZATION))
@pytest.mark.parametrize("call", CALLS)
def test_bad_credentials_are_401(anon, image, request_id, call, auth):
    method, path, kwargs = protected_calls(image, request_id)[call]
    headers = dict(kwargs.pop("headers", {}))
    if BAD_AUTHORIZATION[auth] is not None:
        headers["Authorization"] = BAD_AUTHORIZATION[auth]
    r = anon.request(method, path, headers=headers, **kwargs)
    assert r.status_code == 401, (call, auth, r.status_code, r.text[:300])
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_key_with_empty_value_and_trailing_space_is_401(visus):
    """`Authorization: Key ` exactly as a client with an empty FAL_KEY would send it (httpx refuses to)."""
    host, port = urlsplit(visus.url).hostname, urlsplit(visus.url).port
    body = json.dumps({"allowed_apps": ["sam2"]}).encode()
    raw = (f"POST /rest/tokens/ HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Key \r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.split(b"\r\n", 1)[0].split(b" ")[1] == b"401", reply[:300]


def test_good_key_passes_everywhere(http, image, request_id):
    """The same calls with the right key are not refused (proves the 401s come from the key)."""
    for call, (method, path, kwargs) in protected_calls(image, request_id).items():
        if call in ("status stream",):
            with http.stream(method, path, **kwargs) as r:
                assert r.status_code == 200, call
            continue
        r = http.request(method, path, **kwargs)
        assert r.status_code not in (401, 403) and r.status_code < 500, (call, r.status_code, r.text[:300])


def test_open_routes_need_no_key(anon, http):
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/openapi.json").status_code == 200
    up = http.post("/cdn/files/upload", content=png_bytes(8, 8), headers={"Content-Type": "image/png"})
    assert up.status_code == 200, up.text
    url = up.json()["access_url"]
    r = anon.get(url)
    assert r.status_code == 200 and r.content == png_bytes(8, 8)
    assert r.headers["content-type"] == "image/png"
    assert anon.head(url).status_code == 200


# ---- app tokens (/rest/tokens/) ---------------------------------------------------------

def issue_app_token(http, apps: list[str]) -> str:
    r = http.post("/rest/tokens/", json={"allowed_apps": apps, "token_expiration": 120})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == "application/json"
    token = json.loads(r.content)  # a bare JSON string, not an object
    assert isinstance(token, str) and token
    return token


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def test_app_token_works_on_stream_without_a_key(http, anon, image):
    token = issue_app_token(http, ["sam2"])
    r = anon.post(f"/{ENDPOINT}/stream", params={"fal_jwt_token": token},
                  json={"image_url": image, "prompts": POINT})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events and events[-1]["image"]["content_type"] == "image/png", events
    # As a bearer header too (same token, another way to carry it).
    r = anon.post(f"/{ENDPOINT}/stream", headers={"Authorization": f"Bearer {token}"},
                  json={"image_url": image, "prompts": POINT})
    assert r.status_code == 200, r.text


def test_app_token_for_another_alias_is_refused(http, anon, image):
    token = issue_app_token(http, ["evf-sam"])
    r = anon.post(f"/{ENDPOINT}/stream", params={"fal_jwt_token": token},
                  json={"image_url": image, "prompts": POINT})
    assert r.status_code == 401, r.text


def test_app_token_is_not_an_api_key(http, anon, image):
    token = issue_app_token(http, ["sam2"])
    body = {"image_url": image, "prompts": POINT}
    for headers, params in (({"Authorization": f"Key {token}"}, {}), ({"Authorization": f"Bearer {token}"}, {}),
                            ({}, {"fal_jwt_token": token})):
        for path in (f"/{ENDPOINT}", f"/queue/{ENDPOINT}"):
            r = anon.post(path, headers=headers, params=params, json=body)
            assert r.status_code == 401, (path, headers, params, r.text)
        r = anon.post("/rest/tokens/", headers=headers, params=params, json={"allowed_apps": ["sam2"]})
        assert r.status_code == 401
    # Nor a CDN token.
    r = anon.post("/cdn/files/upload", headers={"Authorization": f"Bearer {token}"}, content=b"x")
    assert r.status_code == 401, r.text


def test_tampered_or_garbage_app_tokens_are_refused(http, anon, image):
    token = issue_app_token(http, ["sam2"])
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    for bad in (f"{header}.{payload}.{flipped}", "not-a-jwt", "", "a.b.c"):
        r = anon.post(f"/{ENDPOINT}/stream", params={"fal_jwt_token": bad},
                      json={"image_url": image, "prompts": POINT})
        assert r.status_code == 401, (bad, r.status_code, r.text)


def test_token_request_is_validated(http):
    assert http.post("/rest/tokens/", json={"allowed_apps": []}).status_code == 422
    assert http.post("/rest/tokens/", json={}).status_code == 422
    # The exact path with its trailing slash is served, not redirected (the Python client never follows).
    r = http.post("/rest/tokens/", json={"allowed_apps": ["sam2"]}, follow_redirects=False)
    assert r.status_code == 200


# ---- CDN tokens (/rest/storage/auth/token) -------------------------------------------------

@pytest.fixture(scope="module")
def cdn_token(http, visus) -> dict:
    r = http.post("/rest/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={})
    assert r.status_code == 200, r.text
    token = r.json()
    assert token["token_type"] == "Bearer"
    assert token["base_url"] == f"{visus.url}/cdn"
    return token


def test_cdn_token_expiry_carries_a_utc_offset(cdn_token):
    expires = dt.datetime.fromisoformat(cdn_token["expires_at"])
    assert expires.tzinfo is not None
    now = dt.datetime.now(dt.timezone.utc)
    assert now < expires < now + dt.timedelta(days=2)


def test_cdn_token_uploads(anon, cdn_token):
    data = png_bytes(16, 16)
    r = anon.post("/cdn/files/upload", content=data, headers={
        "Authorization": f"{cdn_token['token_type']} {cdn_token['token']}", "Content-Type": "image/png",
        "X-Fal-File-Name": "cat.png"})
    assert r.status_code == 200, r.text
    url = r.json()["access_url"]
    assert url.endswith("cat.png")
    got = anon.get(url)
    assert got.content == data and got.headers["content-type"] == "image/png"


def test_cdn_token_is_not_an_api_key(anon, cdn_token, image):
    body = {"image_url": image, "prompts": POINT}
    for header in (f"Key {cdn_token['token']}", f"Bearer {cdn_token['token']}"):
        for method, path, kwargs in (("POST", f"/{ENDPOINT}", {"json": body}),
                                     ("POST", f"/queue/{ENDPOINT}", {"json": body}),
                                     ("POST", "/rest/tokens/", {"json": {"allowed_apps": ["sam2"]}}),
                                     ("POST", "/rest/storage/auth/token", {"json": {}})):
            r = anon.request(method, path, headers={"Authorization": header}, **kwargs)
            assert r.status_code == 401, (header[:10], path, r.status_code, r.text)
    # Not an app token either.
    r = anon.post(f"/{ENDPOINT}/stream", params={"fal_jwt_token": cdn_token["token"]}, json=body)
    assert r.status_code == 401, r.text
