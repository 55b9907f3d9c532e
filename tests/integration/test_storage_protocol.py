"""The storage flows of the official clients, as raw HTTP (protocol reference §7.1, §7.2, §7.4, §12.11-14).

JS upload: initiate -> unauthenticated PUT to upload_url -> GET file_url.
JS multipart: initiate-multipart -> PUT {path}/{n}{search} -> POST {path}/complete{search}.
Python CDN: /rest/storage/auth/token -> POST /cdn/files/upload[/multipart] with the bearer token.
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.helpers import png_bytes

pytestmark = pytest.mark.integration

POINT = [{"x": 4, "y": 4, "label": 1}]


@pytest.fixture(scope="module")
def http(visus):
    with visus.client() as client:
        yield client


@pytest.fixture(scope="module")
def anon(visus):
    # What the JS client uses for the raw PUTs: no Authorization header at all.
    with httpx.Client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def cdn_auth(http) -> dict:
    token = http.post("/rest/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}).json()
    return {"Authorization": f"{token['token_type']} {token['token']}"}


def never_5xx(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 500, (response.request.method, str(response.request.url), response.text[:300])
    return response


def with_path_suffix(url: str, suffix: str) -> str:
    """What the JS client does: append to the path of upload_url, keep its query string."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path + suffix))


def with_query(url: str, **changes) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    query = {k: v for k, v in query.items() if v is not None}
    return urlunsplit(parts._replace(query=urlencode(query)))


def initiate(http, route: str = "initiate", content_type: str = "image/png", file_name: str = "cat.png",
             storage_type: str = "fal-cdn-v3") -> dict:
    r = http.post(f"/rest/storage/upload/{route}", params={"storage_type": storage_type},
                  json={"content_type": content_type, "file_name": file_name},
                  headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"upload_url", "file_url"}
    assert body["upload_url"].startswith("http") and body["file_url"].startswith("http")
    return body


# ---- JS single upload (§7.1) ----------------------------------------------------------------

@pytest.mark.parametrize("storage_type", ["fal-cdn-v3", "gcs"])
def test_js_upload_roundtrip(http, anon, storage_type):
    data = png_bytes(40, 30)
    target = initiate(http, storage_type=storage_type)
    put = anon.put(target["upload_url"], content=data, headers={"Content-Type": "image/png"})
    assert 200 <= put.status_code < 300, put.text
    got = anon.get(target["file_url"])
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "image/png"
    assert int(got.headers["content-length"]) == len(data)


def test_python_fallback_put_carries_the_key_and_still_works(http):
    """§7.4 D: the Python `fal` fallback sends `Authorization: Key` on the PUT too."""
    target = initiate(http, content_type="text/plain", file_name="notes.txt", storage_type="gcs")
    put = http.put(target["upload_url"], content=b"hello", headers={"Content-Type": "text/plain"})
    assert 200 <= put.status_code < 300, put.text
    got = http.get(target["file_url"])
    assert got.content == b"hello" and got.headers["content-type"].startswith("text/plain")


def test_js_upload_without_content_type_gets_a_type(http, anon):
    target = initiate(http, content_type="application/octet-stream", file_name="1795309666295.octet")
    put = anon.put(target["upload_url"], content=b"\x00\x01\x02")
    assert 200 <= put.status_code < 300, put.text
    got = anon.get(target["file_url"])
    assert got.content == b"\x00\x01\x02" and got.headers["content-type"]


def test_put_with_bad_or_missing_signature_is_403(http, anon):
    target = initiate(http)
    url = target["upload_url"]
    sig = parse_qs(urlsplit(url).query)["upload_sig"][0]
    expiry, mac = sig.split(".", 1)
    other = initiate(http)
    other_sig = parse_qs(urlsplit(other["upload_url"]).query)["upload_sig"][0]
    bad_urls = {
        "missing": with_query(url, upload_sig=None),
        "empty": with_query(url, upload_sig=""),
        "garbage": with_query(url, upload_sig="garbage"),
        "flipped mac": with_query(url, upload_sig=f"{expiry}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}"),
        "later expiry, same mac": with_query(url, upload_sig=f"{int(expiry) + 1000}.{mac}"),
        "expired": with_query(url, upload_sig=f"1000.{mac}"),
        "another file's signature": with_query(url, upload_sig=other_sig),
    }
    for name, bad in bad_urls.items():
        r = anon.put(bad, content=b"evil", headers={"Content-Type": "text/plain"})
        assert r.status_code == 403, (name, r.status_code, r.text)
    # Nothing was stored by the refused PUTs, and the genuine URL still works.
    assert anon.get(target["file_url"]).status_code == 404
    assert anon.put(url, content=b"good", headers={"Content-Type": "text/plain"}).status_code == 200
    assert anon.get(target["file_url"]).content == b"good"


def test_signature_of_a_multipart_upload_does_not_allow_a_single_put(http, anon):
    target = initiate(http, route="initiate-multipart")
    r = anon.put(target["upload_url"], content=b"evil")
    assert r.status_code == 403, r.text


# ---- JS multipart (§7.2) ----------------------------------------------------------------------

def test_js_multipart_assembles_in_part_order(http, anon):
    parts = {1: b"A" * 70_000, 2: b"B" * 50_000, 3: b"C" * 123}
    target = initiate(http, route="initiate-multipart", content_type="video/mp4", file_name="clip.mp4")
    upload_url = target["upload_url"]
    etags = []
    for number in (1, 2, 3):  # the client sends them sequentially, no Content-Type
        r = anon.put(with_path_suffix(upload_url, f"/{number}"), content=parts[number])
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert body["partNumber"] == number
        assert body["etag"] == hashlib.md5(parts[number]).hexdigest()
        etags.append({"partNumber": body["partNumber"], "etag": body["etag"]})
    done = anon.post(with_path_suffix(upload_url, "/complete"), json={"parts": etags})
    assert 200 <= done.status_code < 300, done.text
    got = anon.get(target["file_url"])
    assert got.status_code == 200
    assert got.content == parts[1] + parts[2] + parts[3]
    assert got.headers["content-type"] == "video/mp4"


def test_js_multipart_parts_need_the_signature(http, anon):
    target = initiate(http, route="initiate-multipart")
    upload_url = target["upload_url"]
    unsigned = with_query(upload_url, upload_sig=None)
    assert anon.put(with_path_suffix(unsigned, "/1"), content=b"x").status_code == 403
    assert anon.put(with_path_suffix(with_query(upload_url, upload_sig="1.abc"), "/1"), content=b"x").status_code == 403
    other = initiate(http, route="initiate-multipart")["upload_url"]
    other_id = parse_qs(urlsplit(other).query)["upload_id"][0]
    # Our signature does not cover another upload id.
    r = anon.put(with_path_suffix(with_query(upload_url, upload_id=other_id), "/1"), content=b"x")
    assert r.status_code == 403, r.text
    assert anon.post(with_path_suffix(unsigned, "/complete"), json={"parts": []}).status_code == 403


def test_js_multipart_bad_completions_are_4xx(http, anon):
    target = initiate(http, route="initiate-multipart")
    upload_url = target["upload_url"]
    part = anon.put(with_path_suffix(upload_url, "/1"), content=b"one").json()
    complete = with_path_suffix(upload_url, "/complete")
    cases = {
        "missing part": {"parts": [part, {"partNumber": 2, "etag": "0" * 32}]},
        "wrong etag": {"parts": [{"partNumber": 1, "etag": "f" * 32}]},
        "duplicate part": {"parts": [part, part]},
        "part number 0": {"parts": [{"partNumber": 0, "etag": part["etag"]}]},
        "parts not a list": {"parts": "1,2"},
    }
    for name, body in cases.items():
        r = anon.post(complete, json=body)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert "parts" in r.text, (name, r.text)
    assert anon.put(with_path_suffix(upload_url, "/0"), content=b"x").status_code == 422
    assert anon.get(target["file_url"]).status_code == 404
    # A failed completion leaves the upload intact: the right list still completes.
    assert anon.post(complete, json={"parts": [part]}).status_code == 200
    assert anon.get(target["file_url"]).content == b"one"


# ---- Python CDN upload and multipart (§7.4) -----------------------------------------------------

def test_python_cdn_upload(http, anon, cdn_auth):
    data = png_bytes(20, 20)
    r = anon.post(f"{http.base_url}/cdn/files/upload", content=data,
                  headers={**cdn_auth, "Content-Type": "image/png", "X-Fal-File-Name": "dog.png"})
    assert r.status_code == 200, r.text
    got = anon.get(r.json()["access_url"])
    assert got.content == data and got.headers["content-type"] == "image/png"


def test_python_multipart_sorts_parts(http, anon, cdn_auth):
    parts = {n: bytes([64 + n]) * (1000 + n) for n in range(1, 12)}
    start = anon.post(f"{http.base_url}/cdn/files/upload/multipart", headers={
        **cdn_auth, "Accept": "application/json", "Content-Type": "application/zip", "X-Fal-File-Name": "big.zip"})
    assert start.status_code == 200, start.text
    access_url, upload_id = start.json()["access_url"], start.json()["uploadId"]
    completed = []
    # Parts arrive in completion order; the client reads the ETag response header.
    for n in (1, 11, 2, 3, 10, 4, 5, 9, 6, 7, 8):
        r = anon.put(f"{access_url}/multipart/{upload_id}/{n}", content=parts[n], headers={
            **cdn_auth, "Content-Type": "application/zip", "Accept-Encoding": "identity"})
        assert r.status_code == 200, r.text
        assert r.headers["etag"].strip('"') == hashlib.md5(parts[n]).hexdigest()
        completed.append({"partNumber": n, "etag": r.headers["etag"]})
    assert [p["partNumber"] for p in completed][:3] == [1, 11, 2]  # unsorted on purpose
    done = anon.post(f"{access_url}/multipart/{upload_id}/complete", json={"parts": completed}, headers=cdn_auth)
    assert 200 <= done.status_code < 300, done.text
    got = anon.get(access_url)
    assert got.content == b"".join(parts[n] for n in sorted(parts))
    assert got.headers["content-type"] == "application/zip"


def test_python_multipart_needs_the_cdn_token(http, anon, cdn_auth):
    start = anon.post(f"{http.base_url}/cdn/files/upload/multipart", headers={**cdn_auth, "Content-Type": "text/plain"})
    access_url, upload_id = start.json()["access_url"], start.json()["uploadId"]
    assert anon.post(f"{http.base_url}/cdn/files/upload/multipart").status_code == 401
    assert anon.put(f"{access_url}/multipart/{upload_id}/1", content=b"x").status_code == 401
    assert anon.post(f"{access_url}/multipart/{upload_id}/complete", json={"parts": []}).status_code == 401
    # Unknown upload ids and ids of another file are refused (4xx, never 5xx).
    for bad_id in ("0" * 32, "not-an-id", "f" * 40):
        r = never_5xx(anon.put(f"{access_url}/multipart/{bad_id}/1", content=b"x", headers=cdn_auth))
        assert r.status_code in (404, 422), (bad_id, r.status_code, r.text)
    other = anon.post(f"{http.base_url}/cdn/files/upload/multipart", headers=cdn_auth).json()
    r = never_5xx(anon.put(f"{access_url}/multipart/{other['uploadId']}/1", content=b"x", headers=cdn_auth))
    assert r.status_code == 404, r.text


# ---- uploaded files as model inputs -----------------------------------------------------------------

def test_uploaded_file_url_works_as_image_url(http, anon):
    target = initiate(http)
    assert anon.put(target["upload_url"], content=png_bytes(48, 36), headers={"Content-Type": "image/png"}).is_success
    # Own /files/ URLs are read from storage, not fetched (127.0.0.1 is not on the fetch allow-list).
    for image_url in (target["file_url"], urlsplit(target["file_url"]).path):
        r = http.post("/fal-ai/sam2/image", json={"image_url": image_url, "prompts": POINT})
        assert r.status_code == 200, (image_url, r.text)
        assert (r.json()["image"]["width"], r.json()["image"]["height"]) == (48, 36)


def test_non_image_upload_as_image_url_is_422(http, anon, cdn_auth):
    r = anon.post(f"{http.base_url}/cdn/files/upload", content=b"plain text", headers={**cdn_auth,
                                                                                     "Content-Type": "text/plain"})
    r = http.post("/fal-ai/sam2/image", json={"image_url": r.json()["access_url"], "prompts": POINT})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image_url"], r.text


# ---- serving: HEAD, 404s, hostile keys -------------------------------------------------------------------

def test_head_on_a_file(http, anon):
    data = png_bytes(12, 12)
    target = initiate(http)
    anon.put(target["upload_url"], content=data, headers={"Content-Type": "image/png"})
    r = anon.head(target["file_url"])
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(data)
    assert r.headers["content-type"] == "image/png"
    assert r.content == b""


def test_unknown_file_is_404(anon, http):
    for path in ("/files/0123456789abcdef0123456789abcdef_nothing.png", "/files/nothing"):
        for method in ("GET", "HEAD"):
            r = anon.request(method, f"{http.base_url}{path}")
            assert r.status_code == 404, (method, path, r.status_code)


@pytest.mark.parametrize("path", [
    "/files/..%2F..%2Fetc%2Fpasswd",
    "/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/files/%2E%2E",
    "/files/a/%2E%2E/%2E%2E/etc/passwd",
    "/files/.multipart",
    "/files/.multipart%2Fx",
    "/files/.multipart/0123456789abcdef0123456789abcdef/key",
    "/files/x.meta.json",
    "/files/%00",
    "/files/a%5C..%5C..%5Cetc%5Cpasswd",
    "/files/" + "a" * 2000,
])
def test_hostile_file_keys_are_404_never_5xx(http, anon, path):
    # httpx would normalise a literal '/files/..' to '/', so the dot segments are percent-encoded.
    for client in (http, anon):  # with and without a key: /files/ downloads need none
        for method in ("GET", "HEAD"):
            r = never_5xx(client.request(method, f"{http.base_url}{path}"))
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert b"root:" not in r.content


def test_hostile_keys_cannot_be_written(http, anon):
    target = initiate(http)
    sig = parse_qs(urlsplit(target["upload_url"]).query)["upload_sig"][0]
    for path in ("/files/..%2Fescape.txt", "/files/.multipart", "/files/x.meta.json", "/files/%2E%2E"):
        r = never_5xx(anon.put(f"{http.base_url}{path}?upload_sig={sig}", content=b"evil"))
        assert r.status_code in (401, 403, 404, 405, 422), (path, r.status_code, r.text)
