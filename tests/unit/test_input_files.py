"""Input file resolution: data URIs, own /files/ URLs from storage, guarded fetches."""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve import fetch_guard
from serve.fetch_guard import FetchPolicy
from serve.input_files import InputFileError, InputFileResolver
from serve.storage import Storage

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


@pytest.fixture
def storage():
    store = Storage(f"memory://visus-inputs-{uuid.uuid4().hex}", b"secret")
    yield store
    if store.fs.exists(store.root):
        store.fs.rm(store.root, recursive=True)


@pytest.fixture
def resolver(storage):
    policy = FetchPolicy(max_bytes=1024)
    return InputFileResolver(storage, policy, own_origins=["https://visus.example"])


@pytest.fixture
def no_network(monkeypatch):
    async def forbidden_fetch(url, policy):
        raise AssertionError(f"unexpected network fetch of {url}")

    monkeypatch.setattr(fetch_guard, "fetch", forbidden_fetch)


def resolve(resolver, url, base_url=None, field="image_url"):
    return asyncio.run(resolver.resolve(field, url, base_url))


def failure(resolver, url, base_url=None, field="image_url"):
    with pytest.raises(InputFileError) as info:
        resolve(resolver, url, base_url, field)
    error = info.value
    assert error.field == field
    assert error.message.startswith(f"{field}: ")
    assert str(error) == error.message
    return error


# -- data URIs ---------------------------------------------------------------------------------


def test_base64_data_uri(resolver, no_network):
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert resolve(resolver, uri) == (PNG, "image/png")


def test_data_uri_variants(resolver, no_network):
    assert resolve(resolver, "data:text/plain,hello%20world") == (b"hello world", "text/plain")
    assert resolve(resolver, "data:,x") == (b"x", None)
    unpadded = base64.b64encode(b"ab").decode().rstrip("=")
    assert resolve(resolver, f"data:application/octet-stream;base64,{unpadded}")[0] == b"ab"
    wrapped = base64.encodebytes(PNG).decode()  # newlines every 76 characters
    assert resolve(resolver, f"DATA:image/png;charset=x;base64,{wrapped}") == (PNG, "image/png")
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff").decode()
    assert resolve(resolver, f"data:image/png;base64,{urlsafe}")[0] == b"\xfb\xff"


@pytest.mark.parametrize(
    "uri", ["data:image/png;base64,@@@notbase64", "data:image/png;base64,abcde", "data:image/png"]
)
def test_bad_data_uri(resolver, uri):
    error = failure(resolver, uri)
    assert error.status_code == 422


def test_data_uri_too_large(resolver):
    big = "data:image/png;base64," + base64.b64encode(b"x" * 2000).decode()
    assert failure(resolver, big).status_code == 413
    assert failure(resolver, "data:text/plain," + "y" * 1025).status_code == 413


# -- own files ---------------------------------------------------------------------------------


def test_own_file_urls_read_from_storage(resolver, storage, no_network):
    key = storage.new_key("in.png")
    storage.put(key, PNG, "image/png")
    # Nothing listens on port 1: a network round trip would fail (and no_network forbids it).
    base = "http://127.0.0.1:1"
    assert resolve(resolver, f"{base}/files/{key}", base_url=base + "/") == (PNG, "image/png")
    assert resolve(resolver, f"/files/{key}") == (PNG, "image/png")
    assert resolve(resolver, f"https://VISUS.example:443/files/{key}?upload_sig=1") == (
        PNG,
        "image/png",
    )


def test_own_file_in_subfolder_with_escapes(resolver, storage, no_network):
    storage.put("outputs/r1/a b.png", PNG, None)
    assert resolve(resolver, "/files/outputs/r1/a%20b.png") == (PNG, "image/png")


def test_own_file_missing_or_invalid(resolver, no_network):
    error = failure(resolver, "/files/0123_missing.png")
    assert error.status_code == 422 and "not found" in error.message
    base = "http://127.0.0.1:1"
    error = failure(resolver, f"{base}/files/%2e%2e/secret", base_url=base)
    assert error.status_code == 422 and "not a valid file URL" in error.message


def test_own_file_too_large(resolver, storage, no_network):
    key = storage.new_key("big.bin")
    storage.put(key, b"z" * 2048, None)
    assert failure(resolver, f"/files/{key}").status_code == 413


def test_other_origin_files_path_is_fetched_not_read(resolver, storage):
    key = storage.new_key("in.png")
    storage.put(key, PNG, "image/png")
    # Same path on a different origin (port) is not ours: it goes to the guard, which refuses.
    error = failure(resolver, f"http://127.0.0.1:2/files/{key}", base_url="http://127.0.0.1:1")
    assert "not allowed" in error.message


# -- remote URLs -------------------------------------------------------------------------------


def test_forbidden_target(resolver):
    error = failure(resolver, "http://127.0.0.1:1/cat.png")
    assert error.status_code == 422
    assert error.message.startswith("image_url: fetching http://127.0.0.1:1/cat.png is not allowed")


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("ftp://example.com/a.png", "unsupported URL scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("just some text", "is not an http(s) URL or a data URI"),
        ("", "empty"),
    ],
)
def test_unsupported_urls(resolver, url, text):
    error = failure(resolver, url, field="mask_url")
    assert error.status_code == 422 and text in error.message


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body, status = (PNG, 200) if self.path == "/cat.png" else (b"x" * 4096, 200)
        if self.path == "/missing.png":
            body, status = b"no", 404
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def loopback_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_through_guard(storage):
    policy = FetchPolicy(allow=["127.0.0.1"], max_bytes=1024, timeout_s=5)
    resolver = InputFileResolver(storage, policy)
    with loopback_server() as base:
        assert resolve(resolver, f"{base}/cat.png") == (PNG, "image/png")
        error = failure(resolver, f"{base}/missing.png")
        assert error.status_code == 422
        assert error.message == f"image_url: could not fetch {base}/missing.png: HTTP 404"
        assert failure(resolver, f"{base}/big.png").status_code == 413
