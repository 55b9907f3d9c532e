"""The official, unmodified `fal-client` (PyPI 1.0.3) against Visus, redirected as the reference shows."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

import fal_client
import fal_client.client as fc
import httpx
import pytest

from tests.conftest import ALLOWED_HOST
from tests.helpers import LoopbackServer, png_bytes, png_data_uri

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(visus):
    host_port = visus.url.split("://", 1)[1]
    saved = {n: getattr(fc, n) for n in ("RUN_URL_FORMAT", "QUEUE_URL_FORMAT", "REALTIME_URL_FORMAT", "REST_URL",
                                         "CDN_URL")}
    fc.RUN_URL_FORMAT = f"{visus.url}/"
    fc.QUEUE_URL_FORMAT = f"{visus.url}/queue/"
    fc.REALTIME_URL_FORMAT = f"ws://{host_port}/"
    fc.REST_URL = f"{visus.url}/rest"
    fc.CDN_URL = f"{visus.url}/cdn"
    yield fal_client.SyncClient(key=visus.key)
    for name, value in saved.items():
        setattr(fc, name, value)


def point_request(**extra) -> dict:
    return {"image_url": png_data_uri(64, 64), "prompts": [{"x": 20, "y": 30, "label": 1}], **extra}


def test_run(client):
    result = client.run("fal-ai/sam2/image", arguments=point_request())
    assert result["image"]["content_type"] == "image/png"
    assert httpx.get(result["image"]["url"]).status_code == 200


def test_submit_status_result(client):
    handle = client.submit("fal-ai/sam2/image", arguments=point_request(output_format="jpeg"))
    assert handle.request_id
    status = handle.status(with_logs=True)
    assert isinstance(status, (fal_client.Queued, fal_client.InProgress, fal_client.Completed))
    result = handle.get()
    assert result["image"]["content_type"] == "image/jpeg"
    final = handle.status(with_logs=True)
    assert isinstance(final, fal_client.Completed)
    assert final.logs and "segmented" in final.logs[0]["message"]
    # The module-level functions rebuild URLs from QUEUE_URL_FORMAT rather than following them.
    assert client.result("fal-ai/sam2/image", handle.request_id) == result
    assert isinstance(client.status("fal-ai/sam2/image", handle.request_id), fal_client.Completed)


def test_subscribe_with_logs(client):
    seen = []
    result = client.subscribe("fal-ai/sam2/image", arguments=point_request(apply_mask=True), with_logs=True,
                              on_queue_update=seen.append)
    assert result["image"]["width"] == 64
    assert seen and all(isinstance(u, (fal_client.Queued, fal_client.InProgress, fal_client.Completed)) for u in seen)


def test_iter_events(client):
    handle = client.submit("fal-ai/sam2/image", arguments=point_request())
    events = list(handle.iter_events(with_logs=True))
    assert events and isinstance(events[-1], fal_client.Completed)
    assert handle.get()["image"]


def test_sync_mode_returns_data_uri(client):
    result = client.run("fal-ai/sam2/image", arguments=point_request(sync_mode=True, output_format="webp"))
    assert result["image"]["url"].startswith("data:image/webp;base64,")


def test_validation_error_is_a_422(client):
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        client.run("fal-ai/sam2/image", arguments={"prompts": []})
    assert info.value.status_code == 422
    assert "image_url" in str(info.value)


def test_unknown_request_is_404(client):
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        client.status("fal-ai/sam2/image", "does-not-exist")
    assert info.value.status_code == 404


class _SlowImage(BaseHTTPRequestHandler):
    """Serves a PNG slowly, so a job stays IN_PROGRESS long enough to be cancelled mid-run."""

    release = threading.Event()

    def do_GET(self):
        body = png_bytes(64, 64)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:10])
        self.wfile.flush()
        self.release.wait(20)
        try:
            self.wfile.write(body[10:])
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_cancel_running_request(client, visus):
    with LoopbackServer(_SlowImage, host=ALLOWED_HOST) as server:
        try:
            handle = client.submit("fal-ai/sam2/image",
                                   arguments={"image_url": f"{server.url}/slow.png",
                                              "prompts": [{"x": 1, "y": 1, "label": 1}]})
            status = handle.status()
            for _ in range(100):
                if isinstance(status, fal_client.InProgress):
                    break
                threading.Event().wait(0.1)
                status = handle.status()
            assert isinstance(status, fal_client.InProgress)
            handle.cancel()
            with pytest.raises(fal_client.client.FalClientHTTPError) as info:
                handle.get()
            assert info.value.status_code == 499
            final = handle.status()
            assert isinstance(final, fal_client.Completed) and final.error_type == "client_cancelled"
        finally:
            _SlowImage.release.set()
    # Cancelling a finished request is a 400 the client surfaces as an error.
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        handle.cancel()
    assert info.value.status_code == 400


def test_upload_cdn_and_fallback(client, visus, tmp_path):
    data = png_bytes(32, 32)
    url = client.upload(data, "image/png", file_name="cat.png")
    got = httpx.get(url)
    assert got.content == data and got.headers["content-type"] == "image/png"
    url2 = client.upload(b"hello", "text/plain", repository="fal")
    assert httpx.get(url2).content == b"hello"
    path = tmp_path / "dog.png"
    path.write_bytes(data)
    url3 = client.upload_file(path)
    assert url3.endswith("dog.png")
    # An uploaded file works as a model input (read from storage, no network round trip).
    result = client.run("fal-ai/sam2/image", arguments={"image_url": url3, "prompts": [{"x": 5, "y": 5, "label": 1}]})
    assert result["image"]["width"] == 32


def test_stream(client):
    events = list(client.stream("fal-ai/sam2/image", arguments=point_request()))
    assert events[-1]["image"]["content_type"] == "image/png"
    assert all(isinstance(e, dict) for e in events)
