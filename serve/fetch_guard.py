"""SSRF guard: outbound HTTP(S) that only ever reaches public (or allow-listed) addresses.

Every outbound request (input file fetches, webhooks) goes through `guarded_pool`, an httpcore
connection pool whose network backend resolves the host itself, refuses the connection if any
resolved address is forbidden, and then connects to a checked IP. The name is never resolved a
second time, so DNS rebinding cannot swap in an internal address; TLS still uses the host name
for SNI and certificate checks. Redirects are followed by hand so each hop is checked again.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import httpcore
import httpx
from pydantic import BaseModel, Field, field_validator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MiB = 1 << 20
USER_AGENT = "visus/0.1"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Cloud instance-metadata services; named separately because they are the classic SSRF prize.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# httpcore reports transport failures with these; they do not share a base class.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    OSError,
)


class ForbiddenTarget(Exception):
    """The URL points somewhere the server must not connect to."""


class FetchFailed(Exception):
    """The fetch was allowed but did not produce a usable body."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class FetchPolicy(BaseModel):
    """Limits for outbound requests; `allow` entries open addresses the guard would refuse.

    Entries are CIDRs or IPs ("127.0.0.0/8", "::1"), host names ("minio", "*.internal"), or
    either with a port ("minio:9000", "[::1]:8080") to open only that port.
    """

    allow: list[str] = []
    max_bytes: int = Field(100 * MiB, gt=0)
    timeout_s: float = Field(20.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_redirects: int = Field(5, ge=0)

    @field_validator("allow")
    @classmethod
    def _check_allow(cls, entries: list[str]) -> list[str]:
        _allow_rules(tuple(entries))
        return entries

    def allows(self, ip: IPAddress, host: str, port: int) -> bool:
        host = _normalize_host(host)
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        # Parsed from `allow` on each use (cached), so copies with a new list stay correct.
        for target, rule_port in _allow_rules(tuple(self.allow)):
            if rule_port is not None and rule_port != port:
                continue
            if isinstance(target, str):
                if host == target or (target.startswith("*.") and host.endswith(target[1:])):
                    return True
            elif any(candidate in target for candidate in candidates):
                return True
        return False


@functools.lru_cache(maxsize=64)
def _allow_rules(entries: tuple[str, ...]) -> tuple[tuple[IPNetwork | str, int | None], ...]:
    return tuple(_parse_allow_entry(entry) for entry in entries)


def _normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_allow_entry(entry: str) -> tuple[IPNetwork | str, int | None]:
    text = entry.strip()
    if not text:
        raise ValueError("empty allow-list entry")
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False), None
    except ValueError:
        pass
    host, port = text, None
    if text.startswith("["):  # "[v6]:port"
        inner, _, rest = text[1:].partition("]")
        host, port = inner, _parse_port(rest.removeprefix(":"), entry) if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _parse_port(port_text, entry)
    try:
        return ipaddress.ip_network(host, strict=False), port
    except ValueError:
        pass
    host = _normalize_host(host)
    if not host or any(c in host for c in "/:@ "):
        raise ValueError(f"invalid allow-list entry {entry!r}")
    return host, port


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port in allow-list entry {entry!r}")
    return int(text)


def _address_reason(ip: IPAddress) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind, v4 = embedded
            reason = _address_reason(v4)
            if reason:
                return f"{reason} ({kind} {v4})"
            if kind != "Teredo":  # public v4 behind a translation prefix is a public target
                return None
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip in CGNAT:
        return "shared address space (CGNAT)"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_private:
        return "private address"
    if ip.is_reserved:
        return "reserved address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip in NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1]
    return None


def forbidden_reason(ip: IPAddress, host: str, port: int, policy: FetchPolicy) -> str | None:
    """Why connecting to `ip` (resolved from `host`) is refused, or None when it is allowed."""
    if policy.allows(ip, host, port):
        return None
    return _address_reason(ip)


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """All addresses `host` resolves to, in resolver order (module-level so tests can patch it)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


async def checked_addresses(host: str, port: int, policy: FetchPolicy) -> list[IPAddress]:
    """Resolve `host` and return its addresses, refusing if ANY of them is forbidden."""
    host = _normalize_host(host)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await asyncio.wait_for(
                resolve_host(host, port), timeout=policy.connect_timeout_s
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
    if not addresses:
        raise httpcore.ConnectError(f"{host} has no addresses")
    for ip in addresses:
        reason = forbidden_reason(ip, host, port, policy)
        if reason:
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise ForbiddenTarget(f"{shown} is not an allowed target: {reason}")
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Network backend that checks and pins the addresses it connects to."""

    def __init__(
        self, policy: FetchPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, self.policy)
        last_error: Exception | None = None
        for ip in addresses:  # all checked above, so any fallback target is safe too
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ForbiddenTarget("unix sockets are not allowed targets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@asynccontextmanager
async def guarded_pool(policy: FetchPolicy) -> AsyncIterator[httpcore.AsyncConnectionPool]:
    """A connection pool that can only reach targets `policy` allows. One per operation:
    pools are bound to the event loop that uses them."""
    async with httpcore.AsyncConnectionPool(
        ssl_context=_ssl_context(),
        network_backend=GuardedBackend(policy),
        retries=0,
        max_connections=4,
    ) as pool:
        yield pool


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle is the slow part of a pool; one verified context serves them all.
    return httpcore.default_ssl_context()


def parse_target(url: str) -> httpx.URL:
    """Parse an outbound URL, refusing anything but absolute http(s) URLs."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ForbiddenTarget(f"invalid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        scheme = parsed.scheme or "none"
        raise ForbiddenTarget(f"only http and https URLs are allowed, not {scheme!r}")
    if not parsed.host:
        raise ForbiddenTarget("URL has no host")
    return parsed


def request_parts(
    url: httpx.URL, headers: dict[str, str] | None = None
) -> tuple[httpcore.URL, list[tuple[bytes, bytes]]]:
    """The httpcore URL and headers for `url` (Host set here so IPv6 hosts keep brackets)."""
    core_url = httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )
    all_headers = [(b"Host", url.netloc), (b"User-Agent", USER_AGENT.encode())]
    all_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return core_url, all_headers


def timeout_extensions(policy: FetchPolicy, read_timeout_s: float) -> dict[str, object]:
    return {
        "timeout": {
            "connect": policy.connect_timeout_s,
            "read": read_timeout_s,
            "write": read_timeout_s,
            "pool": read_timeout_s,
        }
    }


def response_header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def fetch(url: str, policy: FetchPolicy) -> tuple[bytes, str | None]:
    """GET `url` through the guard; returns (body, content type).

    Raises ForbiddenTarget for refused targets (including redirect hops) and FetchFailed (422
    unreachable, bad status, timeout; 413 too large) otherwise.
    """
    target = parse_target(url)
    try:
        async with asyncio.timeout(policy.timeout_s), guarded_pool(policy) as pool:
            for _ in range(policy.max_redirects + 1):
                result = await _get_once(pool, target, policy)
                if isinstance(result, httpx.URL):
                    target = result
                    continue
                return result
    except TimeoutError:
        raise FetchFailed(422, f"timed out after {policy.timeout_s:g} s") from None
    except httpcore.TimeoutException:
        raise FetchFailed(422, "timed out") from None
    except TRANSPORT_ERRORS as exc:
        raise FetchFailed(422, f"connection failed: {exc or type(exc).__name__}") from None
    raise FetchFailed(422, f"too many redirects (more than {policy.max_redirects})")


async def _get_once(
    pool: httpcore.AsyncConnectionPool, target: httpx.URL, policy: FetchPolicy
) -> tuple[bytes, str | None] | httpx.URL:
    """One GET: the body and content type, or the next URL when redirected."""
    # Identity encoding keeps max_bytes about bytes on the wire and rules out zip bombs.
    core_url, headers = request_parts(target, {"Accept-Encoding": "identity", "Accept": "*/*"})
    extensions = timeout_extensions(policy, policy.timeout_s)
    async with pool.stream("GET", core_url, headers=headers, extensions=extensions) as response:
        status = response.status
        if status in REDIRECT_STATUSES:
            location = response_header(response, b"location")
            if not location:
                raise FetchFailed(422, f"HTTP {status} redirect without a Location")
            return parse_target(str(target.join(location)))
        if not 200 <= status < 300:
            raise FetchFailed(422, f"HTTP {status}")
        limit = format_size(policy.max_bytes)
        too_large = FetchFailed(413, f"file is larger than the {limit} limit")
        length = response_header(response, b"content-length")
        if length and length.strip().isdigit() and int(length) > policy.max_bytes:
            raise too_large
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > policy.max_bytes:
                raise too_large
        return bytes(body), response_header(response, b"content-type")


def format_size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n} bytes"
