"""Reading archives of per-frame control maps: formats, frame order, and refusal of unsafe archives.

Every archive is built in memory here; the bombs are small because the limits are lowered.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from models.control_maps import MiB, ControlMapsError, read_control_maps

LIMITS = {"max_frames": 50, "max_pixels": 1_000_000}


def _png(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _frame(i: int, width: int = 32, height: int = 24) -> np.ndarray:
    """A frame whose colour encodes i, so order can be checked."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = i
    arr[..., 1] = 255 - i
    arr[: height // 2, :, 2] = 7 * i % 256
    return arr


def _zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name) if name.endswith("/") else name, data)
    return buf.getvalue()


def _tar(entries: list[tuple[str, bytes]], mode: str = "w", extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tf:
        for info in extra:
            tf.addfile(info)
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _read(data: bytes, **kw) -> list[np.ndarray]:
    return read_control_maps(data, **{**LIMITS, **kw})


def _error(data: bytes, **kw) -> str:
    with pytest.raises(ControlMapsError) as info:
        _read(data, **kw)
    return str(info.value)


def _patch_zip(data: bytes, name: str, **fields: int) -> bytes:
    """Overwrite size/flag fields of ``name`` in both its local and its central directory header."""
    out = bytearray(data)
    local = {"flags": (6, "<H"), "compress_size": (18, "<L"), "file_size": (22, "<L")}
    central = {"flags": (8, "<H"), "compress_size": (20, "<L"), "file_size": (24, "<L")}
    for sig, layout, name_len_at, name_at in ((b"PK\x03\x04", local, 26, 30), (b"PK\x01\x02", central, 28, 46)):
        pos = out.find(sig)
        while pos >= 0:
            (name_len,) = struct.unpack_from("<H", out, pos + name_len_at)
            if bytes(out[pos + name_at:pos + name_at + name_len]) == name.encode():
                for field, value in fields.items():
                    offset, fmt = layout[field]
                    struct.pack_into(fmt, out, pos + offset, value)
            pos = out.find(sig, pos + 4)
    return bytes(out)


# --- what works --------------------------------------------------------------------------------

FRAMES = [(f"frame_{i}.png", _png(_frame(i))) for i in (3, 1, 10, 2)]  # stored out of order


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"])
def test_every_format_gives_the_same_frames(kind):
    if kind == "zip":
        data = _zip(FRAMES)
    else:
        data = _tar(FRAMES, mode={"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}[kind])
    frames = _read(data)
    assert len(frames) == 4
    for frame, i in zip(frames, (1, 2, 3, 10)):
        assert frame.dtype == np.uint8 and frame.shape == (24, 32, 3)
        assert np.array_equal(frame, _frame(i))


def test_natural_order_by_full_path():
    names = ["frame_10.png", "frame_2.png", "Frame_1.PNG", "frame_9.jpg", "frame_100.png", "frame_11.png"]
    frames = _read(_zip([(n, _png(_frame(int(n.split("_")[1].split(".")[0])))) for n in names]))
    assert [int(f[0, 0, 0]) for f in frames] == [1, 2, 9, 10, 11, 100]

    # Folders sort as a whole: every frame of a/ comes before b/, naturally within each.
    nested = [("b/1.png", 5), ("a/10.png", 4), ("a/2.png", 3), ("a/1/x.png", 1), ("a/1b.png", 2)]
    frames = _read(_tar([(n, _png(_frame(i))) for n, i in nested]))
    assert [int(f[0, 0, 0]) for f in frames] == [1, 2, 3, 4, 5]


def test_grey_maps_become_three_equal_channels():
    grey = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)
    deep = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80).astype(np.uint16)
    frames = _read(_zip([("d0.png", _png(grey)), ("d1.png", _png(Image.fromarray(deep)))]))
    assert frames[0].shape == (24, 32, 3)
    assert np.array_equal(frames[0], np.repeat(grey[:, :, None], 3, axis=2))
    assert frames[1].shape == (24, 32, 3)
    assert np.array_equal(frames[1][..., 0], frames[1][..., 2])
    assert frames[1].max() > 200  # 16-bit depth scaled to 8 bits, not clipped


@pytest.mark.parametrize("build", [_zip, _tar])
def test_non_images_and_metadata_are_skipped(build):
    entries = [
        ("frames/", b""),
        ("frames/frame_1.png", _png(_frame(1))),
        ("frames/FRAME_2.JPEG", b""),  # replaced below: JPEG is lossy, so check it by size only
        ("frames/notes.txt", b"hello"),
        ("frames/.DS_Store", b"\0" * 10),
        ("frames/._frame_1.png", b"AppleDouble junk"),
        ("__MACOSX/frames/._frame_1.png", b"AppleDouble junk"),
        (".hidden/frame_0.png", b"not even an image"),
    ]
    jpeg = io.BytesIO()
    Image.fromarray(_frame(2)).save(jpeg, format="JPEG")
    entries[2] = ("frames/FRAME_2.JPEG", jpeg.getvalue())
    frames = _read(build(entries))
    assert len(frames) == 2
    assert np.array_equal(frames[0], _frame(1))
    assert frames[1].shape == (24, 32, 3)


def test_sub_folder_and_dot_slash_names():
    frames = _read(_tar([("./maps/1.png", _png(_frame(1))), ("./maps/2.png", _png(_frame(2)))], "w:gz"))
    assert [int(f[0, 0, 0]) for f in frames] == [1, 2]


# --- content errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"this is plainly not an archive" * 40, _png(_frame(1))])
def test_not_an_archive(data):
    msg = _error(data)
    assert "not a zip or tar archive" in msg or "empty" in msg


def test_compressed_data_that_is_not_a_tar():
    import gzip

    msg = _error(gzip.compress(b"just some text, no tar headers" * 100))
    assert "gzip data does not hold a tar archive" in msg


def test_truncated_tar_gz():
    entries = [(f"f{i}.bin", np.random.default_rng(i).bytes(20_000)) for i in range(4)]
    data = _tar(entries + [("f1.png", _png(_frame(1)))], "w:gz")
    assert "corrupt or truncated" in _error(data[: len(data) // 2])


@pytest.mark.parametrize("build", [_zip, _tar])
def test_no_images(build):
    msg = _error(build([("readme.txt", b"hi"), ("frames/", b"")]))
    assert "no images" in msg and ".png" in msg and "1 other file" in msg


def test_empty_zip():
    assert "no images" in _error(_zip([]))


@pytest.mark.parametrize("build", [_zip, _tar])
def test_mixed_sizes_name_both_files_and_sizes(build):
    msg = _error(build([("f1.png", _png(_frame(1))), ("f2.png", _png(_frame(2))), ("f3.png", _png(_frame(3, 40, 30)))]))
    assert "'f1.png' is 32x24" in msg and "'f3.png' is 40x30" in msg


@pytest.mark.parametrize("build", [_zip, _tar])
def test_too_many_frames(build):
    msg = _error(build([(f"f{i}.png", _png(_frame(i))) for i in range(6)]), max_frames=5)
    assert "at most 5 frames" in msg
    assert _read(build([(f"f{i}.png", _png(_frame(i))) for i in range(5)]), max_frames=5)


@pytest.mark.parametrize("build", [_zip, _tar])
def test_undecodable_image_is_named(build):
    msg = _error(build([("f1.png", _png(_frame(1))), ("f2.png", b"not an image at all")]))
    assert msg.startswith("entry 'f2.png': ") and "not an image" in msg


def test_pixel_limit():
    msg = _error(_zip([("f1.png", _png(_frame(1, 200, 100)))]), max_pixels=10_000)
    assert "'f1.png'" in msg and "200x100" in msg and "10,000 pixels" in msg


@pytest.mark.parametrize("names", [("frame_1.png", "frame_01.png"), ("A.png", "a.png")])
def test_names_equal_in_natural_order_are_ambiguous(names):
    msg = _error(_zip([(n, _png(_frame(1))) for n in names]))
    assert "same frame in natural order" in msg and all(repr(n) in msg for n in names)


def test_duplicate_names():
    with pytest.warns(UserWarning):  # zipfile itself warns when writing it
        data = _zip([("f1.png", _png(_frame(1))), ("f1.png", _png(_frame(2)))])
    assert "same frame" in _error(data)
    assert "same frame" in _error(_tar([("f1.png", _png(_frame(1))), ("./f1.png", _png(_frame(2)))]))


# --- unsafe archives ---------------------------------------------------------------------------


@pytest.mark.parametrize("build", [_zip, _tar])
@pytest.mark.parametrize("name", ["../evil.png", "frames/../../evil.png", "..\\evil.png", "frames/../ok.txt"])
def test_dot_dot_is_refused(build, name):
    msg = _error(build([("f1.png", _png(_frame(1))), (name, _png(_frame(2)))]))
    assert repr(name) in msg and "'..'" in msg


@pytest.mark.parametrize("build", [_zip, _tar])
@pytest.mark.parametrize("name", ["/etc/evil.png", "C:/evil.png", "\\evil.png"])
def test_absolute_paths_are_refused(build, name):
    msg = _error(build([("f1.png", _png(_frame(1))), (name, _png(_frame(2)))]))
    assert repr(name) in msg and "absolute path" in msg


@pytest.mark.parametrize(
    ("kind", "expected"),
    [(tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"), (tarfile.CHRTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")],
)
def test_tar_links_and_devices_are_refused(kind, expected):
    info = tarfile.TarInfo("frame_2.png")
    info.type = kind
    info.linkname = "/etc/passwd"
    msg = _error(_tar([("frame_1.png", _png(_frame(1)))], extra=[info]))
    assert "'frame_2.png'" in msg and expected in msg and "refused" in msg


def test_zip_symlink_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("frame_1.png", _png(_frame(1)))
        link = zipfile.ZipInfo("frame_2.png")
        link.create_system = 3
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    msg = _error(buf.getvalue())
    assert "'frame_2.png' is a symbolic link" in msg


def test_zip_crc_mismatch():
    data = _zip([("f1.png", _png(_frame(1)))], zipfile.ZIP_STORED)
    pos = data.find(b"IDAT")
    data = data[:pos] + b"IDAX" + data[pos + 4:]
    assert "corrupt at entry 'f1.png': bad CRC-32" in _error(data)


def test_encrypted_entry():
    data = _patch_zip(_zip([("f1.png", _png(_frame(1)))]), "f1.png", flags=0x1)
    assert "encrypted" in _error(data)


def test_bzip2_zip_entries_are_refused():
    msg = _error(_zip([("f1.png", _png(_frame(1)))], method=zipfile.ZIP_BZIP2))
    assert "bzip2 compression" in msg and "deflate" in msg


# --- bombs -------------------------------------------------------------------------------------


def test_zip_bomb_declared_total_over_limit():
    # 1 MiB of zeros deflates to about 1 KiB; the ratio check leaves entries of 1 MiB alone.
    data = _zip([("frame_1.png", b"\0" * MiB)])
    assert len(data) < 4096
    msg = _error(data, max_total_bytes=256 * 1024)
    assert "add up to 1 MiB uncompressed, above the 262,144 bytes limit" in msg


def test_zip_bomb_compression_ratio():
    data = _zip([("frame_1.png", _png(_frame(1))), ("padding.bin", b"\0" * (16 * MiB))])
    assert len(data) < 64 * 1024
    msg = _error(data)
    assert "'padding.bin' would inflate" in msg and "200:1" in msg and "zip bomb" in msg


def test_stored_entries_over_total_limit():
    entries = [(f"f{i}.png", b"\0" * (600 * 1024)) for i in range(2)]
    assert "above the 1 MiB limit" in _error(_zip(entries, zipfile.ZIP_STORED), max_total_bytes=MiB)


def test_zip_whose_directory_lies_about_the_size():
    # Declares 1,000 bytes (so every header check passes) but inflates to 2 MiB.
    data = _patch_zip(_zip([("frame_1.png", b"\0" * (2 * MiB))]), "frame_1.png", file_size=1000)
    msg = _error(data)
    assert "'frame_1.png' holds more data than its header declares (1,000 bytes)" in msg


def test_zip_too_many_entries():
    entries = [(f"f{i}.txt", b"") for i in range(6)]
    msg = _error(_zip(entries), max_entries=5)
    assert "6 entries, more than the 5 allowed" in msg


def test_tar_too_many_entries():
    msg = _error(_tar([(f"d{i}/", b"") for i in range(6)]), max_entries=5)
    assert "more than the 5 entries allowed" in msg


def test_tar_bomb_declared_size():
    data = _tar([("junk.bin", b"\0" * (4 * MiB)), ("f1.png", _png(_frame(1)))], "w:gz")
    assert len(data) < 64 * 1024
    msg = _error(data, max_total_bytes=MiB)
    assert "add up to more than the 1 MiB limit" in msg


def test_tar_gz_stream_counter_catches_bloated_headers():
    # A pax header is not a file, so no declared size covers it: only the stream counter does.
    info = tarfile.TarInfo("f1.png")
    payload = _png(_frame(1))
    info.size = len(payload)
    info.pax_headers = {"comment": "x" * (3 * MiB)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(payload))
    msg = _error(buf.getvalue(), max_total_bytes=MiB, max_entries=10)
    assert "unpacks to more than the 1 MiB limit" in msg


def test_zip_table_of_contents_bounded_before_parsing():
    # Few entries, but a central directory far larger than that many entries need: refused
    # from the end record, before zipfile builds an object per entry.
    data = _zip([("x" * 3000 + f"{i}.png", b"") for i in range(3)])
    msg = _error(data, max_entries=10)
    assert "table of contents is 9,153 bytes, too large for the 10 entries allowed" in msg
