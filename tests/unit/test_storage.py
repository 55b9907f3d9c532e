"""Storage: keys, round trips, signed targets and multipart assembly, on memory://, a tmp dir and s3://.

The s3:// runs go to a real S3 API on loopback (moto's server, started here), through s3fs: what
a cluster's `storage_url: s3://bucket/prefix` does.
"""

from __future__ import annotations

import hashlib
import re
import uuid

import pytest

from serve.storage import (
    FileNotFound,
    InvalidKey,
    Storage,
    StoredFile,
    sanitize_file_name,
    validate_key,
)

SECRET = b"test-signing-key"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1, with s3fs pointed at it (as FSSPEC_S3_ENDPOINT_URL does on a cluster)."""
    import fsspec.config
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"endpoint_url": url, "key": "testing", "secret": "testing",
                                "client_kwargs": {"region_name": "eu-west-1"}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("visus-test")
    yield url
    if saved is None:
        fsspec.config.conf.pop("s3", None)
    else:
        fsspec.config.conf["s3"] = saved
    server.stop()


@pytest.fixture(params=["memory", "local", "s3"])
def storage(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        yield Storage(f"s3://visus-test/store-{uuid.uuid4().hex}", SECRET)
    elif request.param == "memory":
        # The memory filesystem is process-global: a unique root keeps tests apart.
        store = Storage(f"memory://visus-test-{uuid.uuid4().hex}", SECRET)
        yield store
        if store.fs.exists(store.root):
            store.fs.rm(store.root, recursive=True)
    else:
        yield Storage(f"file://{tmp_path}/store", SECRET)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# -- keys ------------------------------------------------------------------------------------


def test_new_key_shape(storage):
    key = storage.new_key("photo.png")
    assert re.fullmatch(r"[0-9a-f]{32}_photo\.png", key)
    assert storage.new_key("photo.png") != key


@pytest.mark.parametrize(
    ("name", "content_type", "expected"),
    [
        ("../../etc/passwd", None, "passwd"),
        ("C:\\Users\\me\\cat.jpg", None, "cat.jpg"),
        ("my photo (1).PNG", None, "my_photo_1_.PNG"),
        ("café.jpg", None, "cafe.jpg"),
        (".hidden", None, "hidden"),
        (None, "image/png", "upload.png"),
        ("", "video/mp4", "upload.mp4"),
        (None, None, "upload.bin"),
        ("...", "application/x-unknown-thing", "upload.bin"),
    ],
)
def test_sanitize_file_name(name, content_type, expected):
    assert sanitize_file_name(name, content_type) == expected


def test_long_names_keep_their_extension():
    name = sanitize_file_name("a" * 500 + ".png")
    assert len(name) <= 120 and name.endswith(".png")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../x",
        "a/../b",
        "a/./b",
        "..",
        "/abs/path",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a//b",
        "a/",
        ".multipart/abc/key",
        "x.png.meta.json",
    ],
)
def test_invalid_keys_are_rejected(storage, key):
    with pytest.raises(InvalidKey):
        validate_key(key)
    with pytest.raises(InvalidKey):
        storage.put(key, b"x", None)
    with pytest.raises(InvalidKey):
        storage.get(key)
    assert issubclass(InvalidKey, ValueError)


# -- whole files -----------------------------------------------------------------------------


def test_put_get_stat_round_trip(storage):
    key = storage.new_key("mask.png")
    stored = storage.put(key, b"\x89PNG data", "image/png")
    assert stored == StoredFile(key=key, content_type="image/png", size=9)
    assert storage.get(key) == (b"\x89PNG data", "image/png")
    assert storage.stat(key) == stored
    assert storage.exists(key)


def test_content_type_guessed_or_defaulted(storage):
    png = storage.new_key("a.png")
    assert storage.put(png, b"x", None).content_type == "image/png"
    blob = storage.new_key("noext")
    assert storage.put(blob, b"x", None).content_type == "application/octet-stream"
    assert storage.get(blob)[1] == "application/octet-stream"


def test_subfolder_keys_and_overwrite(storage):
    key = "outputs/req123/frame_0001.png"
    storage.put(key, b"one", None)
    storage.put(key, b"two", "image/png")
    assert storage.get(key) == (b"two", "image/png")


def test_missing_file(storage):
    key = storage.new_key("nope.png")
    with pytest.raises(FileNotFound) as info:
        storage.get(key)
    assert isinstance(info.value, KeyError)
    with pytest.raises(FileNotFound):
        storage.stat(key)
    with pytest.raises(FileNotFound):
        storage.open_stream(key)  # raised at call time, before any chunk is requested
    assert not storage.exists(key)


def test_open_stream_chunks(storage):
    key = storage.new_key("big.bin")
    data = bytes(range(256)) * 10
    storage.put(key, data, None)
    chunks = list(storage.open_stream(key, chunk=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 560]
    assert b"".join(chunks) == data


def test_delete(storage):
    key = storage.new_key("gone.txt")
    storage.put(key, b"x", None)
    storage.delete(key)
    assert not storage.exists(key)


def test_local_writes_leave_no_temp_files(tmp_path):
    storage = Storage(str(tmp_path / "plain-path-store"), SECRET)
    key = storage.new_key("a.txt")
    storage.put(key, b"hello", "text/plain")
    names = sorted(p.name for p in (tmp_path / "plain-path-store").iterdir())
    assert names == sorted([key, key + ".meta.json"])


def test_empty_signing_key_rejected(tmp_path):
    with pytest.raises(ValueError):
        Storage(str(tmp_path), b"")


# -- signing ---------------------------------------------------------------------------------


def test_sign_and_verify(storage):
    key = storage.new_key("up.png")
    sig = storage.sign(key)
    assert re.fullmatch(r"\d+\.[0-9a-f]{64}", sig)
    assert storage.verify(key, sig)
    assert not storage.verify(key, sig, purpose="download")
    assert not storage.verify(storage.new_key("up.png"), sig)
    expiry, mac = sig.split(".")
    assert not storage.verify(key, f"{int(expiry) + 1000}.{mac}")  # extended expiry
    assert not storage.verify(key, f"{expiry}.{'0' * 64}")
    assert not Storage("memory://other-store", b"other-secret").verify(key, sig)


def test_expired_signature(storage):
    key = storage.new_key("up.png")
    assert not storage.verify(key, storage.sign(key, expires_in=-1))


@pytest.mark.parametrize("sig", ["", "garbage", "12.", ".abc", "x.y", None, "1e9.ab"])
def test_garbage_signatures(storage, sig):
    assert not storage.verify(storage.new_key("a"), sig)


# -- multipart -------------------------------------------------------------------------------


def upload_parts(storage, key, parts):
    upload_id = storage.create_multipart(key)
    etags = {n: storage.put_part(key, upload_id, n, data) for n, data in parts.items()}
    return upload_id, etags


def test_multipart_unsorted_parts(storage):
    key = storage.new_key("video.mp4")
    parts = {1: b"a" * 10, 2: b"b" * 5, 3: b"c" * 7, 11: b"k"}
    # Uploaded out of order, as parallel clients do.
    upload_id, etags = upload_parts(storage, key, {n: parts[n] for n in (3, 11, 1, 2)})
    assert etags == {n: md5(d) for n, d in parts.items()}
    listed = [(1, etags[1]), (11, etags[11]), (2, f'"{etags[2]}"'), (3, etags[3])]
    stored = storage.complete_multipart(key, upload_id, listed, "video/mp4")
    assert stored.size == 23 and stored.content_type == "video/mp4"
    assert storage.get(key) == (parts[1] + parts[2] + parts[3] + parts[11], "video/mp4")
    assert not storage.fs.exists(f"{storage.root}/.multipart/{upload_id}")
    with pytest.raises(ValueError):  # the upload is gone once completed
        storage.put_part(key, upload_id, 1, b"x")


def test_multipart_without_part_list_takes_all(storage):
    key = storage.new_key("x.bin")
    upload_id, _ = upload_parts(storage, key, {2: b"22", 1: b"1"})
    assert storage.complete_multipart(key, upload_id, None, None).size == 3
    assert storage.get(key)[0] == b"122"


def test_multipart_reupload_replaces_part(storage):
    key = storage.new_key("x.bin")
    upload_id, _ = upload_parts(storage, key, {1: b"old"})
    etag = storage.put_part(key, upload_id, 1, b"new")
    storage.complete_multipart(key, upload_id, [(1, etag)], None)
    assert storage.get(key)[0] == b"new"


def test_multipart_etag_mismatch_keeps_upload(storage):
    key = storage.new_key("x.bin")
    upload_id, etags = upload_parts(storage, key, {1: b"one", 2: b"two"})
    with pytest.raises(ValueError, match="part 2 etag mismatch"):
        storage.complete_multipart(key, upload_id, [(1, etags[1]), (2, md5(b"other"))], None)
    assert not storage.exists(key)
    # Nothing was consumed, so a corrected list still completes.
    storage.complete_multipart(key, upload_id, [(2, etags[2]), (1, etags[1])], None)
    assert storage.get(key)[0] == b"onetwo"


def test_multipart_missing_and_duplicate_parts(storage):
    key = storage.new_key("x.bin")
    upload_id, etags = upload_parts(storage, key, {1: b"one"})
    with pytest.raises(ValueError, match="2 were never uploaded"):
        storage.complete_multipart(key, upload_id, [(1, etags[1]), (2, "abc")], None)
    with pytest.raises(ValueError, match="more than once"):
        storage.complete_multipart(key, upload_id, [(1, etags[1]), (1, etags[1])], None)
    with pytest.raises(ValueError, match="at least one part"):
        storage.complete_multipart(key, upload_id, [], None)


def test_multipart_rejects_foreign_and_unknown_uploads(storage):
    key = storage.new_key("x.bin")
    upload_id = storage.create_multipart(key)
    with pytest.raises(ValueError, match="another file"):
        storage.put_part(storage.new_key("y.bin"), upload_id, 1, b"x")
    with pytest.raises(ValueError, match="unknown multipart upload"):
        storage.put_part(key, uuid.uuid4().hex, 1, b"x")
    with pytest.raises(ValueError, match="invalid upload id"):
        storage.put_part(key, "../../etc", 1, b"x")
    with pytest.raises(ValueError, match="part number"):
        storage.put_part(key, upload_id, 0, b"x")
    storage.abort_multipart(key, upload_id)
    with pytest.raises(ValueError, match="unknown multipart upload"):
        storage.complete_multipart(key, upload_id, None, None)
