"""Resumable, checksum-verified file download for model checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Iterator

import httpx
from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None


class DownloadError(RuntimeError):
    """The download failed; a partial ``.part`` file may remain for a later resume."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected SHA-256; the partial file was deleted."""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def file_sha256(path: Path) -> str:
    return _hash_file(path).hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Several replicas on one node may fetch the same checkpoint into a shared cache at start-up;
    # without a lock they would append to the same .part file.
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    headers: dict[str, str] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Bytes go to ``dest.part`` first and are renamed into place only when complete (and, when
    ``sha256`` is given, verified), so ``dest`` is never a partial file. An existing ``.part`` is
    resumed with an HTTP Range request; a server that ignores Range is handled by starting over.
    An existing ``dest`` is kept when it matches ``sha256`` (or when no hash is given).
    Concurrent calls for the same ``dest`` are serialised with a ``dest.lock`` file (POSIX).
    Network failures raise :class:`DownloadError` and keep the ``.part`` for the next call.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    with _exclusive(dest.with_name(dest.name + ".lock")):
        if dest.exists() and (expected is None or file_sha256(dest) == expected):
            return dest

        try:
            with httpx.Client(timeout=timeout, follow_redirects=True, headers=headers) as client:
                hasher = _fetch(client, url, part, progress, chunk_size)
        except httpx.HTTPError as exc:
            raise DownloadError(f"GET {url} failed: {exc!r}; run again to resume") from exc

        digest = hasher.hexdigest()
        if expected is not None and digest != expected:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"SHA-256 mismatch for {url}: expected {expected}, got {digest}; "
                f"the partial file was deleted"
            )
        os.replace(part, dest)
    return dest


def _fetch(client: httpx.Client, url: str, part: Path, progress: bool, chunk_size: int):
    """Fill ``part`` with the whole remote file; return a sha256 object over all of its bytes."""
    offset = part.stat().st_size if part.exists() else 0
    # identity encoding: Range offsets count bytes on the wire, so a gzip-decoding client
    # would resume at the wrong place.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"

    with client.stream("GET", url, headers=headers) as resp:
        if offset and resp.status_code == 416:
            if _total_from_416(resp) == offset:
                return _hash_file(part)  # an earlier run had fetched everything
        elif not (offset and resp.status_code == 206 and _range_start(resp) != offset):
            return _stream_body(resp, url, part, offset, progress, chunk_size)
    # The .part does not fit the remote file (it changed, or the .part is garbage), or the
    # server sent a range we did not ask for: start over without Range.
    part.unlink(missing_ok=True)
    return _fetch(client, url, part, progress, chunk_size)


def _stream_body(
    resp: httpx.Response, url: str, part: Path, offset: int, progress: bool, chunk_size: int
):
    if resp.status_code >= 400:
        raise DownloadError(f"GET {url} failed: HTTP {resp.status_code} {resp.reason_phrase}")

    if offset and resp.status_code == 206:
        hasher, mode = _hash_file(part), "ab"
        total = _content_range_total(resp)
    else:
        # No Range request, or a server that ignored it and sent the whole file (200).
        hasher, mode, offset = hashlib.sha256(), "wb", 0
        length = resp.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None

    written = offset
    # iter_raw() without a size yields bytes as they arrive, so a dropped connection leaves
    # everything received so far in the .part; chunk_size only sizes the write buffer.
    with open(part, mode, buffering=chunk_size) as fh, tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name.removesuffix(".part"),
        disable=not progress,
    ) as bar:
        for chunk in resp.iter_raw():
            fh.write(chunk)
            hasher.update(chunk)
            written += len(chunk)
            bar.update(len(chunk))
        fh.flush()
        os.fsync(fh.fileno())

    if total is not None and written != total:
        raise DownloadError(
            f"GET {url} ended after {written} of {total} bytes; run again to resume"
        )
    return hasher


def _hash_file(path: Path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def _range_start(resp: httpx.Response) -> int | None:
    m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


def _content_range_total(resp: httpx.Response) -> int | None:
    m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    return int(m.group(3)) if m and m.group(3) != "*" else None


def _total_from_416(resp: httpx.Response) -> int | None:
    m = re.fullmatch(r"bytes \*/(\d+)", resp.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None
