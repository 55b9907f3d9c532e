"""Turning `*_url` request fields into bytes.

A field may hold a data URI, a URL of this server's own `/files/` route (read straight from
storage, no network round trip), or a public http(s) URL fetched through the SSRF guard. Every
failure becomes an InputFileError whose message names the field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from serve import fetch_guard
from serve.fetch_guard import FetchFailed, FetchPolicy, ForbiddenTarget
from serve.storage import FileNotFound, InvalidKey, Storage

FILES_PREFIX = "/files/"
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_IN_MESSAGE = 200


class InputFileError(Exception):
    """An input file that cannot be used; `message` names the field and says why."""

    def __init__(self, field: str, detail: str, status_code: int = 422) -> None:
        self.field = field
        self.status_code = status_code
        self.message = f"{field}: {detail}"
        super().__init__(self.message)


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            return None
        return scheme, parts.hostname.lower().rstrip("."), parts.port or DEFAULT_PORTS[scheme]
    except ValueError:  # a bad port
        return None


def _shown(url: str) -> str:
    # Long URLs (signed, or with huge queries) would swamp the error message.
    return url if len(url) <= MAX_URL_IN_MESSAGE else url[:MAX_URL_IN_MESSAGE] + "..."


def decode_data_uri(uri: str, max_bytes: int) -> tuple[bytes, str | None]:
    """Decode `data:[<mime>][;params][;base64],<data>`; raises ValueError (bad) or
    OverflowError (larger than max_bytes)."""
    header, comma, payload = uri[len("data:"):].partition(",")
    if not comma:
        raise ValueError("malformed data URI (no comma)")
    params = [p.strip() for p in header.split(";")]
    is_base64 = params[-1].lower() == "base64"
    mime = params[0].lower() if params[0] and "/" in params[0] else None
    if is_base64:
        # Percent-escapes and whitespace are legal in a URI; padding is often dropped.
        text = re.sub(r"\s+", "", unquote(payload))
        if len(text) * 3 // 4 > max_bytes + 2:  # checked before decoding anything large
            raise OverflowError
        if "-" in text or "_" in text:
            text = text.replace("-", "+").replace("_", "/")
        text += "=" * (-len(text) % 4)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("invalid base64 in data URI") from None
    else:
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise OverflowError
    return data, mime


class InputFileResolver:
    """Resolves input file URLs to (bytes, content type) under one fetch policy."""

    def __init__(
        self, storage: Storage, policy: FetchPolicy, own_origins: list[str] | None = None
    ) -> None:
        self.storage = storage
        self.policy = policy
        self.own_origins = {o for o in map(_origin, own_origins or []) if o}

    async def resolve(
        self, field: str, url: str, base_url: str | None = None
    ) -> tuple[bytes, str | None]:
        if not isinstance(url, str) or not url.strip():
            raise InputFileError(field, "expected a URL or data URI, got an empty value")
        url = url.strip()
        if url[:5].lower() == "data:":
            return self._data_uri(field, url)
        key = self._own_file_key(url, base_url)
        if key is not None:
            return await self._own_file(field, url, key)
        scheme = urlsplit(url).scheme.lower() if ":" in url else ""
        if scheme not in ("http", "https"):
            if scheme:
                raise InputFileError(
                    field, f"unsupported URL scheme {scheme!r}; use http(s) or a data URI"
                )
            raise InputFileError(field, "is not an http(s) URL or a data URI")
        return await self._fetch(field, url)

    def _data_uri(self, field: str, url: str) -> tuple[bytes, str | None]:
        try:
            return decode_data_uri(url, self.policy.max_bytes)
        except OverflowError:
            raise InputFileError(field, self._too_large(), 413) from None
        except ValueError as exc:
            raise InputFileError(field, str(exc)) from None

    def _own_file_key(self, url: str, base_url: str | None) -> str | None:
        if url.startswith(FILES_PREFIX):
            path = urlsplit(url).path
        else:
            origin = _origin(url)
            if origin is None:
                return None
            own = set(self.own_origins)
            if base_url and (base := _origin(base_url)):
                own.add(base)
            if origin not in own:
                return None
            path = urlsplit(url).path
            if not path.startswith(FILES_PREFIX):
                return None
        return unquote(path[len(FILES_PREFIX):])

    async def _own_file(self, field: str, url: str, key: str) -> tuple[bytes, str | None]:
        # Storage calls block (s3 is a network call), so they run off the event loop.
        try:
            return await asyncio.to_thread(self._read_own, field, key)
        except InvalidKey:
            raise InputFileError(field, f"{_shown(url)} is not a valid file URL") from None
        except FileNotFound:
            raise InputFileError(field, f"file {_shown(url)} not found") from None

    def _read_own(self, field: str, key: str) -> tuple[bytes, str]:
        # Checked first so an oversized stored file is refused without reading it.
        if self.storage.stat(key).size > self.policy.max_bytes:
            raise InputFileError(field, self._too_large(), 413)
        return self.storage.get(key)

    async def _fetch(self, field: str, url: str) -> tuple[bytes, str | None]:
        try:
            return await fetch_guard.fetch(url, self.policy)
        except ForbiddenTarget as exc:
            raise InputFileError(field, f"fetching {_shown(url)} is not allowed: {exc}") from None
        except FetchFailed as exc:
            raise InputFileError(
                field, f"could not fetch {_shown(url)}: {exc.message}", exc.status_code
            ) from None

    def _too_large(self) -> str:
        return f"file is larger than the {fetch_guard.format_size(self.policy.max_bytes)} limit"
