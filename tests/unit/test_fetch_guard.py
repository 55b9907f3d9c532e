"""SSRF guard: address decisions (pure, no sockets) and real fetches from loopback servers.

Only loopback is ever connected to. Private and public addresses appear solely in pure
decision calls or behind a monkeypatched resolver whose connection is asserted never to happen.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import pydantic
import pytest

from serve import fetch_guard
from serve.fetch_guard import (
    FetchFailed,
    FetchPolicy,
    ForbiddenTarget,
    GuardedBackend,
    fetch,
    forbidden_reason,
)

LOOPBACK = FetchPolicy(allow=["127.0.0.0/8"], timeout_s=5, connect_timeout_s=2)


# -- loopback test server ----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.hits.append((self.path, dict(self.headers)))
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            reply(self, 404, b"not found")
        else:
            route(self)

    def log_message(self, *args):
        pass


def reply(handler, status, body=b"", headers=None):
    handler.send_response(status)
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def serve(routes, host="127.0.0.1"):
    server = ThreadingHTTPServer((host, 0), _Handler)
    server.daemon_threads = True
    server.routes, server.hits = routes, []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", server.hits
    finally:
        server.shutdown()
        server.server_close()


def run(coro):
    return asyncio.run(coro)


# -- pure decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("100.100.100.200", "metadata"),
        ("100.64.0.1", "CGNAT"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("fd12:3456::1", "private"),
        ("::ffff:10.0.0.1", "IPv4-mapped"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:a00:1::", "6to4"),
        ("64:ff9b::a9fe:a9fe", "NAT64"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", ""),
        ("255.255.255.255", ""),
        ("192.0.2.10", ""),
    ],
)
def test_forbidden_addresses(address, reason):
    verdict = forbidden_reason(ipaddress.ip_address(address), "example.com", 443, FetchPolicy())
    assert verdict is not None
    assert reason in verdict


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_allowed(address):
    assert forbidden_reason(ipaddress.ip_address(address), "dns.example", 80, FetchPolicy()) is None


def test_allow_list_overrides():
    ip = ipaddress.ip_address
    policy = FetchPolicy(allow=["10.0.0.0/8", "minio:9000", "*.svc.internal", "[fd00::5]:8080"])
    assert forbidden_reason(ip("10.1.2.3"), "x", 80, policy) is None
    assert forbidden_reason(ip("::ffff:10.1.2.3"), "x", 80, policy) is None
    assert forbidden_reason(ip("192.168.0.9"), "minio", 9000, policy) is None
    assert forbidden_reason(ip("192.168.0.9"), "MINIO.", 9000, policy) is None
    assert forbidden_reason(ip("192.168.0.9"), "minio", 80, policy) is not None
    assert forbidden_reason(ip("172.20.0.1"), "a.svc.internal", 80, policy) is None
    assert forbidden_reason(ip("172.20.0.1"), "svc.internal.evil", 80, policy) is not None
    assert forbidden_reason(ip("fd00::5"), "x", 8080, policy) is None
    assert forbidden_reason(ip("fd00::5"), "x", 80, policy) is not None
    assert forbidden_reason(ip("192.168.1.1"), "x", 80, policy) is not None


def test_allow_list_follows_copies():
    private = ipaddress.ip_address("10.0.0.1")
    closed = FetchPolicy()
    opened = closed.model_copy(update={"allow": ["10.0.0.0/8"]})
    assert forbidden_reason(private, "x", 80, opened) is None
    assert forbidden_reason(private, "x", 80, closed) is not None


@pytest.mark.parametrize("entry", ["", "host:port", "host:99999", "a b", "http://x/"])
def test_invalid_allow_entries(entry):
    with pytest.raises(pydantic.ValidationError):
        FetchPolicy(allow=[entry])


# -- DNS: every resolved address is checked, nothing is connected -----------------------------


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the socket layer: records what would be dialled, never dials."""

    def __init__(self):
        self.calls = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.calls.append((host, port))
        raise httpcore.ConnectError("test backend does not connect")

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)


def fake_resolver(table, lookups):
    async def resolve(host, port):
        lookups.append(host)
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


def test_dns_to_private_address_is_refused_before_connecting(monkeypatch):
    lookups = []
    table = {"rebind.example": ["8.8.8.8", "10.0.0.1"], "meta.example": ["169.254.169.254"]}
    monkeypatch.setattr(fetch_guard, "resolve_host", fake_resolver(table, lookups))
    dialled = []

    async def no_connect(self, *args, **kwargs):
        dialled.append(args)
        raise AssertionError("must not connect")

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", no_connect)
    for host in table:
        with pytest.raises(ForbiddenTarget, match="private|metadata"):
            run(fetch(f"http://{host}/image.png", FetchPolicy()))
    assert lookups == ["rebind.example", "meta.example"]
    assert dialled == []


def test_backend_refuses_and_pins_resolved_address(monkeypatch):
    lookups = []
    table = {"evil.example": ["10.0.0.1"], "good.example": ["203.0.113.7"]}
    monkeypatch.setattr(fetch_guard, "resolve_host", fake_resolver(table, lookups))
    # 203.0.113.0/24 is documentation space: allow-list it so the pinning path can be observed.
    inner = RecordingBackend()
    backend = GuardedBackend(FetchPolicy(allow=["203.0.113.0/24"]), inner=inner)
    with pytest.raises(ForbiddenTarget):
        run(backend.connect_tcp("evil.example", 80))
    assert inner.calls == []
    with pytest.raises(httpcore.ConnectError):
        run(backend.connect_tcp("good.example", 443))
    # The checked IP is what gets dialled, never the name (no second, unchecked lookup).
    assert inner.calls == [("203.0.113.7", 443)]
    with pytest.raises(ForbiddenTarget):
        run(backend.connect_unix_socket("/var/run/docker.sock"))


def test_resolve_host_numeric():
    assert run(fetch_guard.resolve_host("127.0.0.1", 80)) == [ipaddress.ip_address("127.0.0.1")]


# -- real fetches over loopback ------------------------------------------------------------------


def image(handler):
    reply(handler, 200, b"PNGDATA", {"Content-Type": "image/png"})


def test_loopback_fetch_when_allow_listed():
    with serve({"/img.png": image}) as (base, hits):
        assert run(fetch(f"{base}/img.png?x=1", LOOPBACK)) == (b"PNGDATA", "image/png")
    assert hits[0][0] == "/img.png?x=1"
    assert hits[0][1]["Host"] == base.removeprefix("http://")


def test_host_name_connects_to_checked_address(monkeypatch):
    lookups = []
    monkeypatch.setattr(
        fetch_guard, "resolve_host", fake_resolver({"files.example": ["127.0.0.1"]}, lookups)
    )
    with serve({"/img.png": image}) as (base, hits):
        port = base.rsplit(":", 1)[1]
        body, _ = run(fetch(f"http://files.example:{port}/img.png", LOOPBACK))
    assert body == b"PNGDATA"
    assert lookups == ["files.example"]
    assert hits[0][1]["Host"] == f"files.example:{port}"


def test_loopback_refused_when_not_allow_listed():
    with serve({"/img.png": image}) as (base, hits):
        with pytest.raises(ForbiddenTarget, match="loopback"):
            run(fetch(f"{base}/img.png", FetchPolicy()))
        with pytest.raises(ForbiddenTarget, match="loopback"):
            run(fetch(base.replace("127.0.0.1", "[::ffff:127.0.0.1]") + "/img.png", FetchPolicy()))
    assert hits == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://x", "nope"])
def test_non_http_schemes_refused(url):
    with pytest.raises(ForbiddenTarget):
        run(fetch(url, LOOPBACK))


def test_redirect_to_unlisted_address_refused():
    with serve({"/secret": image}) as (inner_base, inner_hits):

        def to_inner(handler):
            reply(handler, 302, headers={"Location": f"{inner_base}/secret"})

        with serve({"/start": to_inner}, host="127.0.0.2") as (outer_base, outer_hits):
            policy = FetchPolicy(allow=["127.0.0.2"], timeout_s=5)
            with pytest.raises(ForbiddenTarget, match="127.0.0.1"):
                run(fetch(f"{outer_base}/start", policy))
    assert len(outer_hits) == 1
    assert inner_hits == []


def test_relative_redirects_followed_and_capped():
    routes = {
        "/a": lambda h: reply(h, 301, headers={"Location": "/b"}),
        "/b": lambda h: reply(h, 307, headers={"Location": "c"}),
        "/c": image,
        "/loop": lambda h: reply(h, 302, headers={"Location": "/loop"}),
        "/nowhere": lambda h: reply(h, 302),
        "/ftp": lambda h: reply(h, 302, headers={"Location": "ftp://127.0.0.1/x"}),
    }
    with serve(routes) as (base, hits):
        assert run(fetch(f"{base}/a", LOOPBACK)) == (b"PNGDATA", "image/png")
        with pytest.raises(FetchFailed, match="too many redirects") as info:
            run(fetch(f"{base}/loop", LOOPBACK.model_copy(update={"max_redirects": 3})))
        assert info.value.status_code == 422
        with pytest.raises(FetchFailed, match="without a Location"):
            run(fetch(f"{base}/nowhere", LOOPBACK))
        with pytest.raises(ForbiddenTarget):
            run(fetch(f"{base}/ftp", LOOPBACK))
    assert sum(path == "/loop" for path, _ in hits) == 4


def chunked(handler, total, piece=1000):
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    sent = 0
    try:
        while sent < total:
            handler.wfile.write(b"%x\r\n%s\r\n" % (piece, b"x" * piece))
            sent += piece
        handler.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass  # the client hung up once it had seen enough


def test_size_limits():
    routes = {
        "/declared": lambda h: reply(h, 200, b"x" * 5000),
        "/streamed": lambda h: chunked(h, 50_000),
        "/small": lambda h: chunked(h, 3000),
    }
    policy = LOOPBACK.model_copy(update={"max_bytes": 4096})
    with serve(routes) as (base, _):
        for path in ("/declared", "/streamed"):
            with pytest.raises(FetchFailed, match="larger than") as info:
                run(fetch(f"{base}{path}", policy))
            assert info.value.status_code == 413
        assert run(fetch(f"{base}/small", policy)) == (b"x" * 3000, None)


def test_total_timeout():
    release = threading.Event()

    def slow(handler):
        release.wait(5)
        reply(handler, 200, b"late")

    policy = LOOPBACK.model_copy(update={"timeout_s": 0.3})
    with serve({"/slow": slow}) as (base, _):
        started = time.monotonic()
        with pytest.raises(FetchFailed, match="timed out") as info:
            run(fetch(f"{base}/slow", policy))
        release.set()
    assert info.value.status_code == 422
    assert time.monotonic() - started < 3


def test_error_status_and_unreachable():
    with serve({}) as (base, _):
        with pytest.raises(FetchFailed, match="^HTTP 404$") as info:
            run(fetch(f"{base}/missing.png", LOOPBACK))
        assert info.value.status_code == 422
    # The server is gone, so its port now refuses connections.
    with pytest.raises(FetchFailed, match="connection failed") as info:
        run(fetch(f"{base}/missing.png", LOOPBACK))
    assert info.value.status_code == 422
