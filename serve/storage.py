"""File storage for uploads and outputs, over any fsspec URL.

Files live under one root (a local directory by default, `memory://` in tests, `s3://...` on
clusters). Each file has a JSON sidecar with its content type. Upload targets are authorised by
HMAC-signed query values, and multipart uploads are kept as part files until completed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import re
import time
import unicodedata
import uuid
from collections.abc import Iterable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

DEFAULT_CONTENT_TYPE = "application/octet-stream"
META_SUFFIX = ".meta.json"
MULTIPART_DIR = ".multipart"
MAX_KEY_LENGTH = 1024
MAX_NAME_LENGTH = 120
MAX_PART_NUMBER = 10_000  # the same bound S3 uses, so s3-backed stores behave alike

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class InvalidKey(ValueError):
    """A key that could escape the storage root or is otherwise malformed."""


class FileNotFound(KeyError):
    """No file is stored under the key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "file not found"


class StoredFile(BaseModel):
    key: str
    content_type: str
    size: int


def sanitize_file_name(file_name: str | None, content_type: str | None = None) -> str:
    """A file name safe to use in a key and a URL, keeping the extension when there is one."""
    name = (file_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    # Fold accents to ASCII rather than dropping the letters outright.
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip("._-")
    if not name:
        return "upload" + _extension_for(content_type)
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_NAME_LENGTH - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_NAME_LENGTH]
    return name


def _extension_for(content_type: str | None) -> str:
    if content_type:
        ext = mimetypes.guess_extension(content_type.split(";", 1)[0].strip().lower())
        if ext:
            return ext
    return ".bin"


def validate_key(key: str) -> str:
    """Return the key unchanged, or raise InvalidKey if it is not a safe relative path."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("empty file key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey("file key is too long")
    if _CONTROL_CHARS.search(key):
        raise InvalidKey("file key contains control characters")
    if "\\" in key:
        raise InvalidKey("file key contains a backslash")
    if key.startswith("/"):
        raise InvalidKey("file key must be a relative path")
    if key.endswith(META_SUFFIX):
        raise InvalidKey("file key uses a reserved suffix")
    for segment in key.split("/"):
        # Dot-segments cover '..' and '.', and also keep keys out of the hidden multipart area.
        if not segment or segment.startswith("."):
            raise InvalidKey(f"invalid file key segment {segment!r}")
    return key


class Storage:
    """Keyed byte storage rooted at an fsspec URL or a plain local path."""

    def __init__(self, url: str, signing_key: bytes) -> None:
        if not signing_key:
            raise ValueError("storage needs a non-empty signing key")
        self.url = url
        self._signing_key = signing_key
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        # Object stores replace objects atomically on put; only a local directory needs the
        # write-to-temp-then-rename dance, and needs its directories created.
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)

    # -- keys and paths --------------------------------------------------------------------

    def new_key(self, file_name: str | None, content_type: str | None = None) -> str:
        return f"{uuid.uuid4().hex}_{sanitize_file_name(file_name, content_type)}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    def _meta_path(self, key: str) -> str:
        return self._path(key) + META_SUFFIX

    # -- whole files -----------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str | None = None) -> StoredFile:
        return self._put_chunks(key, [data], content_type)

    def _put_chunks(
        self, key: str, chunks: Iterable[bytes], content_type: str | None
    ) -> StoredFile:
        path = self._path(key)
        content_type = content_type or mimetypes.guess_type(key)[0] or DEFAULT_CONTENT_TYPE
        # The sidecar goes first: a reader that finds the data always finds its type too.
        meta = json.dumps({"content_type": content_type}).encode()
        self._write_atomic(path + META_SUFFIX, [meta])
        size = self._write_atomic(path, chunks)
        return StoredFile(key=key, content_type=content_type, size=size)

    def _write_atomic(self, path: str, chunks: Iterable[bytes]) -> int:
        size = 0
        if not self._local:
            with self.fs.open(path, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
            return size
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
            self.fs.mv(tmp, path)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        return size

    def get(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            raise FileNotFound(f"file {key} not found") from None
        return data, self._content_type(key)

    def stat(self, key: str) -> StoredFile:
        path = self._path(key)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            raise FileNotFound(f"file {key} not found") from None
        if info.get("type") == "directory":
            raise FileNotFound(f"file {key} not found")
        return StoredFile(key=key, content_type=self._content_type(key), size=int(info["size"]))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except FileNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        for path in (self._path(key), self._meta_path(key)):
            if self.fs.exists(path):
                self.fs.rm(path)

    def open_stream(self, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Chunks of the file; FileNotFound is raised here, before the first chunk is asked for."""
        self.stat(key)
        return self._iter_file(self._path(key), chunk)

    def _iter_file(self, path: str, chunk: int) -> Iterator[bytes]:
        with self.fs.open(path, "rb") as f:
            while block := f.read(chunk):
                yield block

    def _content_type(self, key: str) -> str:
        try:
            meta = json.loads(self.fs.cat_file(self._meta_path(key)))
            return str(meta["content_type"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return mimetypes.guess_type(key)[0] or DEFAULT_CONTENT_TYPE

    # -- signed upload targets ---------------------------------------------------------------

    def _mac(self, key: str, purpose: str, expiry: int) -> str:
        message = f"{purpose}\n{key}\n{expiry}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def sign(self, key: str, purpose: str = "upload", expires_in: int = 3600) -> str:
        validate_key(key)
        expiry = int(time.time()) + int(expires_in)
        return f"{expiry}.{self._mac(key, purpose, expiry)}"

    def verify(self, key: str, sig: str, purpose: str = "upload") -> bool:
        try:
            validate_key(key)
            expiry_text, mac = sig.split(".", 1)
            expiry = int(expiry_text)
        except (InvalidKey, ValueError, AttributeError):
            return False
        if expiry < time.time():
            return False
        return hmac.compare_digest(mac, self._mac(key, purpose, expiry))

    # -- multipart uploads -------------------------------------------------------------------

    def _upload_dir(self, upload_id: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id or ""):
            raise ValueError(f"invalid upload id {upload_id!r}")
        return f"{self.root}/{MULTIPART_DIR}/{upload_id}"

    def _check_upload(self, key: str, upload_id: str) -> str:
        directory = self._upload_dir(upload_id)
        try:
            owner = self.fs.cat_file(f"{directory}/key").decode()
        except FileNotFoundError:
            raise ValueError(f"unknown multipart upload {upload_id}") from None
        if owner != key:
            raise ValueError(f"multipart upload {upload_id} belongs to another file")
        return directory

    def create_multipart(self, key: str) -> str:
        validate_key(key)
        upload_id = uuid.uuid4().hex
        # The owning key is recorded so parts cannot be attached to some other file's upload.
        self._write_atomic(f"{self._upload_dir(upload_id)}/key", [key.encode()])
        return upload_id

    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        directory = self._check_upload(key, upload_id)
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise ValueError(f"part number must be between 1 and {MAX_PART_NUMBER}")
        self._write_atomic(f"{directory}/part-{part_number:05d}", [data])
        return _md5(data)

    def _stored_parts(self, directory: str) -> dict[int, str]:
        parts = {}
        for path in self.fs.ls(directory, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if re.fullmatch(r"part-\d{5}", name):
                parts[int(name[5:])] = path
        return parts

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]] | None,
        content_type: str | None = None,
    ) -> StoredFile:
        """Join the parts in part-number order; `parts` (number, etag) pins which parts and
        what they must hold, None takes every uploaded part."""
        directory = self._check_upload(key, upload_id)
        stored = self._stored_parts(directory)
        expected: dict[int, str | None]
        if parts is None:
            expected = dict.fromkeys(stored)
        else:
            expected = {}
            for number, etag in parts:
                if number in expected:
                    raise ValueError(f"part {number} is listed more than once")
                expected[number] = _normalize_etag(etag)
        if not expected:
            raise ValueError("a multipart upload needs at least one part")
        missing = sorted(n for n in expected if n not in stored)
        if missing:
            raise ValueError(f"part(s) {', '.join(map(str, missing))} were never uploaded")
        order = sorted(expected)
        # Check every etag before writing anything, so a bad list leaves the upload intact.
        for number in order:
            data = self.fs.cat_file(stored[number])
            if expected[number] is not None and _md5(data) != expected[number]:
                raise ValueError(
                    f"part {number} etag mismatch: expected {expected[number]}, "
                    f"stored part has {_md5(data)}"
                )
        result = self._put_chunks(
            key, (self.fs.cat_file(stored[n]) for n in order), content_type
        )
        self.fs.rm(directory, recursive=True)
        return result

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.fs.rm(self._check_upload(key, upload_id), recursive=True)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _normalize_etag(etag: str | None) -> str | None:
    # Clients echo the ETag header, which may be quoted or marked weak.
    if etag is None:
        return None
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"').lower() or None
