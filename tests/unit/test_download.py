"""Resumable, verified downloads against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from models.download import ChecksumError, DownloadError, download

PAYLOAD = bytes(range(256)) * 4099  # about 1 MB, not a multiple of the chunk sizes used
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    # Per-server settings and request log, set on a subclass by the fixture.
    payload: bytes = PAYLOAD
    honour_range: bool = True
    truncate_to: int | None = None
    ignore_range_start: bool = False  # answer 206 but from byte 0
    requests: list[dict]

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if self.path != "/file.bin":
            self.send_error(404)
            return
        body, status, extra = self.payload, 200, {}
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and self.honour_range:
            start = 0 if self.ignore_range_start else int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            extra["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            body = body[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if self.honour_range else "none")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if self.truncate_to is not None:
            body = body[: self.truncate_to]
        self.wfile.write(body)
        self.close_connection = True


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval makes shutdown() return quickly at teardown.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.handler = handler
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_full_download(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    assert download(server.url, dest, sha256=PAYLOAD_SHA, progress=True, chunk_size=4096) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("file.bin.part").exists()
    assert server.handler.requests == [{"path": "/file.bin", "range": None}]


def test_resume_from_partial_file(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:300_000])
    download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.handler.requests[-1]["range"] == "bytes=300000-"


def test_resume_without_hash(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:12345])
    download(server.url, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.handler.honour_range = False
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"stale bytes that must not survive")
    download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.handler.requests[-1]["range"] == "bytes=33-"


def test_206_with_wrong_start_restarts(server, tmp_path):
    server.handler.ignore_range_start = True
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:5000])
    download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.handler.requests] == ["bytes=5000-", None]


def test_complete_part_file_is_finished_without_refetch(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD)
    download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.handler.requests) == 1  # answered 416, nothing re-sent


def test_part_file_longer_than_remote_restarts(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD + b"junk")
    download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.handler.requests] == [f"bytes={len(PAYLOAD) + 4}-", None]


def test_checksum_mismatch_raises_and_cleans_up(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        download(server.url, dest, sha256="0" * 64, progress=False)
    assert not dest.exists()
    assert not dest.with_name("file.bin.part").exists()


def test_skip_when_present_with_right_hash(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    download(server.url, dest, sha256=PAYLOAD_SHA.upper(), progress=False)
    assert server.handler.requests == []


def test_skip_when_present_without_hash(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"anything")
    download(server.url, dest, progress=False)
    assert server.handler.requests == []
    assert dest.read_bytes() == b"anything"


def test_present_file_with_wrong_hash_is_replaced(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"corrupt")
    download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_truncated_response_keeps_part_for_resume(server, tmp_path):
    dest = tmp_path / "file.bin"
    server.handler.truncate_to = 100_000
    with pytest.raises(DownloadError, match="resume"):
        download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    part = dest.with_name("file.bin.part")
    kept = part.stat().st_size
    assert not dest.exists()
    assert 0 < kept < len(PAYLOAD)
    assert part.read_bytes() == PAYLOAD[:kept]

    server.handler.truncate_to = None
    download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.handler.requests[-1]["range"] == f"bytes={kept}-"


def test_http_error(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download(server.url.replace("file.bin", "missing.bin"), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_downloads_a_named_checkpoint(server, tmp_path, capsys):
    from serve.cli import main

    code = main(["models", "download", "sam2.1_hiera_tiny", "--url", server.url, "--sha256", PAYLOAD_SHA,
                 "--output", str(tmp_path)])
    assert code == 0
    assert (tmp_path / "sam2.1_hiera_tiny.pt").read_bytes() == PAYLOAD
    assert capsys.readouterr().out.strip().endswith("sam2.1_hiera_tiny.pt")
    assert main(["models", "download", "no-such-model", "--output", str(tmp_path)]) == 2
