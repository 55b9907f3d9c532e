"""Read an uploaded archive of per-frame control maps (depth maps for ``fal-ai/svd``) into frames.

The archive is a zip, or a tar that may be gzip, bzip2 or xz compressed, holding one image per
frame. Everything happens in memory: nothing is ever written to disk, so entry names are only
checked, never used as paths, yet an archive whose names could escape a folder (absolute paths,
``..``) or that holds links or device files is refused outright, because it was not made by an
honest "zip the frames folder".

Which files are frames
    Files whose name ends in .png, .jpg, .jpeg, .bmp, .gif, .tif or .tiff (any case). Directories,
    other files and hidden or metadata entries (any path component starting with ``.``, such as
    ``._frame_1.png`` or ``.DS_Store``, and anything under ``__MACOSX/``) are skipped.

Frame order
    Natural sort of the full path inside the archive: runs of digits compare by their value and
    the rest case-insensitively, so ``frame_2.png`` comes before ``frame_10.png``. Paths are
    compared folder by folder, so images in sub-folders are allowed and each folder's frames stay
    together (``a/frame_10.png`` < ``b/frame_1.png``). Two images whose paths are equal in that
    order (``frame_1.png`` and ``frame_01.png``, ``A.png`` and ``a.png``, or a name stored twice)
    make the order a guess, so the archive is refused and both names are given.

Limits (bombs)
    Declared sizes are checked before anything is inflated: the number of entries, the sum of all
    files' uncompressed sizes, and each zip entry's compression ratio. Headers are then not
    trusted: each zip entry is inflated with a counter and refused as soon as it yields more than
    it declared, and a compressed tar is decompressed through a counter capped at the size limit
    (plus an allowance for tar headers). Each image is decoded with ``decode_image``, which checks
    ``max_pixels`` from the image header before decoding any pixel.
"""

from __future__ import annotations

import bz2
import copy
import gzip
import io
import lzma
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from models.image_io import ImageDecodeError, decode_image

MiB = 1024 * 1024

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

# Deflate tops out near 1032:1, and already-compressed PNG/JPEG frames are close to 1:1, so a
# large entry above 200:1 is almost surely a bomb. Small entries are exempt: a flat 64x64 BMP
# compresses that well and costs nothing to inflate.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_MIN_BYTES = 1 * MiB

# zipfile parses the whole central directory into ZipInfo objects on open, so its size is
# bounded first: a real entry takes 46 bytes plus its name and extra fields, well under this.
_ZIP_DIRECTORY_BYTES_PER_ENTRY = 512

# A tar stream is bigger than its files: a 512-byte header (two or three with a long name or pax
# record) and padding to 512 bytes per entry, then end-of-archive blocks and record padding.
_TAR_BYTES_PER_ENTRY = 2048
_TAR_TAIL_BYTES = 64 * 1024

_READ_CHUNK = 64 * 1024

_ZIP_METHODS = {
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
    9: "deflate64",
    93: "zstandard",
}

_COMPRESSED_TAR = (
    (b"\x1f\x8b", "gzip", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", "bzip2", bz2.BZ2File),
    (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile),
)

_DRIVE = re.compile(r"^[A-Za-z]:")
_DIGITS = re.compile(r"([0-9]+)")
_MAX_NAME_IN_MESSAGE = 200

# Errors the zipfile/tarfile/decompressor stack raises on damaged data (bad headers, CRC
# mismatches, truncated streams, names that are not valid UTF-8).
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    struct.error,
)


class ControlMapsError(ValueError):
    """The archive cannot be used as control maps; the message is meant for the API user."""


def read_control_maps(
    data: bytes,
    *,
    max_frames: int,
    max_pixels: int,
    max_total_bytes: int = 512 * MiB,
    max_entries: int = 10_000,
) -> list[np.ndarray]:
    """Decode the images in the zip or tar ``data`` into one ``(H, W, 3)`` uint8 RGB array per frame.

    Frames are in natural order of their path (see the module docstring); greyscale maps (8 or 16
    bit) come back as three equal channels. All frames must have the same size. Raises
    ControlMapsError for anything the user has to fix.
    """
    if not data:
        raise ControlMapsError("the archive is empty (0 bytes)")
    limits = _Limits(max_frames, max_pixels, max_total_bytes, max_entries)
    # A zip is known by its first bytes (a local file header, or the end record of an empty zip),
    # not by searching the end: data with a zip glued behind something else is not accepted.
    if bytes(data[:4]) in (b"PK\x03\x04", b"PK\x05\x06"):
        frames = _read_zip(data, limits)
    else:
        frames = _read_tar(data, limits)
    return _in_order(frames)


@dataclass(frozen=True)
class _Limits:
    max_frames: int
    max_pixels: int
    max_total_bytes: int
    max_entries: int


# --- names -------------------------------------------------------------------------------------


def _shown(name: str) -> str:
    if len(name) > _MAX_NAME_IN_MESSAGE:
        name = name[:_MAX_NAME_IN_MESSAGE] + "..."
    return repr(name)


def _safe_parts(name: str) -> list[str]:
    """The path components of an entry name; refuses names that could point outside a folder."""
    # Windows tools write backslashes, so both separators count.
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise ControlMapsError(
            f"entry {_shown(name)} has an absolute path; archives with absolute paths are refused"
        )
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise ControlMapsError(
            f"entry {_shown(name)} has a '..' component that points outside the archive; "
            "such archives are refused"
        )
    return parts


def _is_frame(parts: list[str]) -> bool:
    if not parts:
        return False
    if any(p.startswith(".") or p.lower() == "__macosx" for p in parts):
        return False  # AppleDouble ._ files, .DS_Store, __MACOSX/ resource forks, hidden folders
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def _natural_key(parts: list[str]) -> tuple:
    # Digit runs compare by value without int() (no limit on their length; "01" == "1"). Tagging
    # digits 0 and text 1 keeps the comparison between like types.
    key = []
    for part in parts:
        chunks = []
        for i, chunk in enumerate(_DIGITS.split(part)):
            if i % 2:
                value = chunk.lstrip("0")
                chunks.append((0, len(value), value))
            elif chunk:
                chunks.append((1, 0, chunk.casefold()))
        key.append(tuple(chunks))
    return tuple(key)


class _Frames:
    """Frames collected in archive order, keyed by their natural sort key."""

    def __init__(self, limits: _Limits) -> None:
        self.limits = limits
        self.by_key: dict[tuple, tuple[str, np.ndarray | None]] = {}
        self.ignored = 0

    def add_name(self, name: str, parts: list[str]) -> tuple:
        key = _natural_key(parts)
        if key in self.by_key:
            other = self.by_key[key][0]
            raise ControlMapsError(
                f"entries {_shown(other)} and {_shown(name)} are the same frame in natural order "
                "(numbers compare by value, letters ignore case); rename one of them"
            )
        self.by_key[key] = (name, None)
        return key

    def decode(self, key: tuple, raw: bytes) -> None:
        name = self.by_key[key][0]
        try:
            frame = decode_image(raw, max_pixels=self.limits.max_pixels)
        except ImageDecodeError as exc:
            raise ControlMapsError(f"entry {_shown(name)}: {exc}") from None
        self.by_key[key] = (name, frame)


def _in_order(frames: _Frames) -> list[np.ndarray]:
    if not frames.by_key:
        ignored = f"; {frames.ignored} other file(s) were ignored" if frames.ignored else ""
        raise ControlMapsError(
            f"the archive holds no images ({', '.join(IMAGE_EXTENSIONS)}){ignored}"
        )
    ordered = [frames.by_key[key] for key in sorted(frames.by_key)]
    first_name, first = ordered[0]
    for name, frame in ordered[1:]:
        if frame.shape != first.shape:
            raise ControlMapsError(
                f"all control maps must have the same size, but {_shown(first_name)} is "
                f"{first.shape[1]}x{first.shape[0]} and {_shown(name)} is "
                f"{frame.shape[1]}x{frame.shape[0]}"
            )
    return [frame for _, frame in ordered]


def _size(n: int) -> str:
    return f"{n / MiB:.3g} MiB" if n >= MiB else f"{n:,} bytes"


def _too_many_frames(count: int | None, limits: _Limits) -> ControlMapsError:
    # A tar is read as a stream, so there the count is only known to be over the limit.
    held = f"{count} images" if count is not None else f"more than {limits.max_frames} images"
    return ControlMapsError(f"the archive holds {held}; at most {limits.max_frames} frames are allowed")


def _too_large_declared(total: int | None, limits: _Limits) -> ControlMapsError:
    limit = _size(limits.max_total_bytes)
    if total is None:
        return ControlMapsError(f"the archive's files add up to more than the {limit} limit uncompressed")
    return ControlMapsError(
        f"the archive's files add up to {_size(total)} uncompressed, above the {limit} limit"
    )


def _read_capped(f: BinaryIO, name: str, declared: int) -> bytes:
    """Read one entry, refusing it the moment it yields more than its header declared."""
    chunks, got = [], 0
    while chunk := f.read(_READ_CHUNK):
        got += len(chunk)
        if got > declared:
            raise ControlMapsError(
                f"entry {_shown(name)} holds more data than its header declares "
                f"({_size(declared)}); the archive is refused"
            )
        chunks.append(chunk)
    return b"".join(chunks)


# --- zip ---------------------------------------------------------------------------------------


def _zip_directory(data: bytes) -> tuple[int, int] | None:
    """``(entries, central directory bytes)`` from the end record, found as zipfile finds it."""
    pos = len(data) - 22
    if not (pos >= 0 and data[pos:pos + 4] == b"PK\x05\x06" and data[-2:] == b"\x00\x00"):
        pos = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65536))
        if pos < 0 or pos + 22 > len(data):
            return None
    entries, size = struct.unpack("<HL", data[pos + 10:pos + 16])
    # Zip64 keeps the real values in a record just before its locator, which precedes the end.
    loc = pos - 20
    if loc >= 56 and data[loc:loc + 4] == b"PK\x06\x07" and data[loc - 56:loc - 52] == b"PK\x06\x06":
        entries, size = struct.unpack("<QQ", data[loc - 56 + 32:loc - 56 + 48])
    return entries, size


def _read_zip(data: bytes, limits: _Limits) -> _Frames:
    directory = _zip_directory(data)
    if directory is not None:
        entries, size = directory
        if entries > limits.max_entries:
            raise ControlMapsError(
                f"the archive has {entries:,} entries, more than the {limits.max_entries:,} allowed"
            )
        if size > limits.max_entries * _ZIP_DIRECTORY_BYTES_PER_ENTRY:
            raise ControlMapsError(
                f"the archive's table of contents is {_size(size)}, too large for the "
                f"{limits.max_entries:,} entries allowed"
            )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ARCHIVE_ERRORS as exc:
        raise ControlMapsError(f"the zip archive is corrupt: {exc}") from None

    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:  # the end record may under-count
            raise ControlMapsError(
                f"the archive has {len(infos):,} entries, more than the {limits.max_entries:,} allowed"
            )
        frames = _Frames(limits)
        images: list[tuple[tuple, zipfile.ZipInfo]] = []
        total = 0
        for info in infos:
            name = info.filename
            parts = _safe_parts(name)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ControlMapsError(
                    f"entry {_shown(name)} is {_special_kind(kind)}; archives with links or "
                    "device files are refused"
                )
            if info.is_dir() or kind == stat.S_IFDIR:
                continue
            total += info.file_size
            _check_ratio(info)
            if not _is_frame(parts):
                frames.ignored += 1
                continue
            images.append((frames.add_name(name, parts), info))
        if total > limits.max_total_bytes:
            raise _too_large_declared(total, limits)
        if len(images) > limits.max_frames:
            raise _too_many_frames(len(images), limits)

        read = 0
        for key, info in images:
            raw = _read_zip_entry(archive, info)
            read += len(raw)
            if read > limits.max_total_bytes:  # cannot happen past the checks above; kept as a backstop
                raise ControlMapsError(
                    f"the archive unpacks to more than the {_size(limits.max_total_bytes)} limit"
                )
            frames.decode(key, raw)
    return frames


def _special_kind(kind: int) -> str:
    if kind == stat.S_IFLNK:
        return "a symbolic link"
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return "a device file"
    return "a special file (FIFO or socket)"


def _check_ratio(info: zipfile.ZipInfo) -> None:
    if (
        info.file_size > RATIO_CHECK_MIN_BYTES
        and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size
    ):
        raise ControlMapsError(
            f"entry {_shown(info.filename)} would inflate from {_size(info.compress_size)} to "
            f"{_size(info.file_size)}, more than {MAX_COMPRESSION_RATIO}:1; the archive looks "
            "like a zip bomb and is refused"
        )


def _read_zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    name = info.filename
    if info.flag_bits & 0x1:
        raise ControlMapsError(f"entry {_shown(name)} is encrypted; send an archive without a password")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # zipfile inflates bzip2/LZMA entries without an output cap, so one small read of a
        # crafted entry could take gigabytes; deflate is what every zip tool writes by default.
        method = _ZIP_METHODS.get(info.compress_type, f"method {info.compress_type}")
        raise ControlMapsError(
            f"entry {_shown(name)} uses {method} compression; only stored or deflate entries "
            "(the zip default) are accepted"
        )
    # zipfile stops at the declared size and then fails on the CRC, which would hide a header
    # that under-declares. Asking for one byte more, with zipfile's CRC check off until the end,
    # lets _read_capped see the lie and name it; the CRC is then checked here.
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    del probe.CRC
    try:
        with archive.open(probe) as f:
            raw = _read_capped(f, name, info.file_size)
    except ControlMapsError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise ControlMapsError(f"the zip archive is corrupt at entry {_shown(name)}: {exc}") from None
    if zlib.crc32(raw) != info.CRC:
        raise ControlMapsError(f"the zip archive is corrupt at entry {_shown(name)}: bad CRC-32")
    return raw


# --- tar ---------------------------------------------------------------------------------------


class _CappedReader:
    """A read-only stream that raises once more than ``limit`` bytes have come out of it."""

    def __init__(self, raw: BinaryIO, limit: int, limit_shown: str) -> None:
        self.raw = raw
        self.limit = limit
        self.limit_shown = limit_shown
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        room = self.limit - self.count + 1  # one byte past the limit proves it is exceeded
        size = room if size is None or size < 0 else min(size, room)
        chunk = self.raw.read(size)
        self.count += len(chunk)
        if self.count > self.limit:
            raise ControlMapsError(f"the archive unpacks to more than the {self.limit_shown} limit")
        return chunk

    def close(self) -> None:
        self.raw.close()


def _read_tar(data: bytes, limits: _Limits) -> _Frames:
    compression, raw = None, io.BytesIO(data)
    for magic, label, opener in _COMPRESSED_TAR:
        if data[: len(magic)] == magic:
            compression, raw = label, opener(raw)
            break
    stream = _CappedReader(
        raw,
        limits.max_total_bytes + limits.max_entries * _TAR_BYTES_PER_ENTRY + _TAR_TAIL_BYTES,
        _size(limits.max_total_bytes),
    )
    try:
        # "r|" reads strictly forward, so the only bytes tarfile sees come through the counter.
        archive = tarfile.open(fileobj=stream, mode="r|")
    except ControlMapsError:
        raise
    except _ARCHIVE_ERRORS as exc:
        if compression is None:
            raise ControlMapsError(
                "the data is not a zip or tar archive; send a .zip, .tar, .tar.gz, .tar.bz2 or "
                ".tar.xz file holding one image per frame"
            ) from None
        raise ControlMapsError(
            f"the {compression} data does not hold a tar archive, or it is corrupt: {exc}"
        ) from None

    frames = _Frames(limits)
    with archive:
        try:
            _collect_tar(archive, frames, limits)
        except ControlMapsError:
            raise
        except _ARCHIVE_ERRORS as exc:
            raise ControlMapsError(f"the tar archive is corrupt or truncated: {exc}") from None
    return frames


def _collect_tar(archive: tarfile.TarFile, frames: _Frames, limits: _Limits) -> None:
    entries = images = total = 0
    for member in archive:  # TarFile keeps each TarInfo: at most max_entries of them
        entries += 1
        if entries > limits.max_entries:
            raise ControlMapsError(f"the archive has more than the {limits.max_entries:,} entries allowed")
        name = member.name
        parts = _safe_parts(name)
        if member.isdir():
            continue
        if not member.isreg():
            raise ControlMapsError(
                f"entry {_shown(name)} is {_tar_kind(member)}; archives with links or device "
                "files are refused"
            )
        total += member.size
        if total > limits.max_total_bytes:
            raise _too_large_declared(None, limits)
        if not _is_frame(parts):
            frames.ignored += 1
            continue  # tarfile reads past its data (through the counter) on the next header
        images += 1
        if images > limits.max_frames:
            raise _too_many_frames(None, limits)
        key = frames.add_name(name, parts)
        f = archive.extractfile(member)
        frames.decode(key, _read_capped(f, name, member.size) if f is not None else b"")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {_shown(member.linkname)})"
    if member.islnk():
        return f"a hard link (to {_shown(member.linkname)})"
    if member.isdev():
        return "a device file or FIFO"
    return f"a special entry (tar type {member.type!r})"
