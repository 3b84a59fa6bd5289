"""One behaviour suite, run against both backends: a directory and S3.

S3 is ``SIFT_TEST_S3_ENDPOINT_URL`` when set (CI: a real S3 server), otherwise a moto server
started on a free loopback port for the test session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service import blobs
from service.blobs import (
    BlobNotFound,
    BlobStore,
    FilesystemBlobStore,
    S3BlobStore,
    TenantBlobStore,
    blob_store_from_url,
)
from tests.service.conftest import free_port


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    endpoint = os.environ.get("SIFT_TEST_S3_ENDPOINT_URL")
    if endpoint:
        yield endpoint
        return
    from moto.server import ThreadedMotoServer

    # moto accepts any credentials; set dummies only where none are configured.
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> Iterator[str]:
    bucket = f"sift-test-{uuid.uuid4().hex[:12]}"
    yield bucket
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)
    except Exception:  # the bucket may never have been created
        pass


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3BlobStore(bucket, "tenant/a", endpoint_url=endpoint)


def test_roundtrip_and_overwrite(store: BlobStore) -> None:
    store.ping()
    data = bytes(range(256)) * 100
    store.put_bytes("features/abc/shard-00000.safetensors", data)
    assert store.get_bytes("features/abc/shard-00000.safetensors") == data
    assert store.exists("features/abc/shard-00000.safetensors")
    store.put_bytes("features/abc/shard-00000.safetensors", b"v2")
    assert store.get_bytes("features/abc/shard-00000.safetensors") == b"v2"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b"" and store.exists("empty")


def test_missing(store: BlobStore) -> None:
    assert not store.exists("nope/x")
    with pytest.raises(BlobNotFound):
        store.get_bytes("nope/x")
    store.put_bytes("dir/file", b"1")
    assert not store.exists("dir")  # a "directory" is not an object
    with pytest.raises(BlobNotFound):
        store.get_bytes("dir")


def test_list_and_delete_prefix(store: BlobStore) -> None:
    keys = ["a/b/2", "a/b/1", "a/bc", "a/c/1", "b/1"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list_keys() == sorted(keys)
    assert store.list_keys("a/b/") == ["a/b/1", "a/b/2"]
    assert store.list_keys("a/b") == ["a/b/1", "a/b/2", "a/bc"]  # a plain string prefix
    assert store.list_keys("zzz") == []
    assert store.delete_prefix("a/b/") == 2
    assert store.list_keys() == ["a/bc", "a/c/1", "b/1"]
    assert store.delete_prefix("a") == 2
    assert store.list_keys() == ["b/1"]
    assert store.delete_prefix("nothing/") == 0
    assert store.get_bytes("b/1") == b"b/1"


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "..", "../x", "a//b", "./a", "a/./b", "a\\b", "a/", "a\x00"]
)
def test_bad_keys(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.get_bytes(key)
    with pytest.raises(ValueError):
        store.exists(key)


def test_bad_prefixes(store: BlobStore) -> None:
    with pytest.raises(ValueError):
        store.delete_prefix("")  # would delete everything
    for prefix in ("../", "/a", "a/../"):
        with pytest.raises(ValueError):
            store.list_keys(prefix)
        with pytest.raises(ValueError):
            store.delete_prefix(prefix)


# --- atomicity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_filesystem_failed_put_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store = FilesystemBlobStore(tmp_path)
    store.put_bytes("k/obj", b"old")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(blobs.os, failing, boom)
    with pytest.raises(OSError, match="disk on fire"):
        store.put_bytes("k/obj", b"new" * 1000)
    with pytest.raises(OSError, match="disk on fire"):
        store.put_bytes("k/fresh", b"new")
    monkeypatch.undo()
    assert store.get_bytes("k/obj") == b"old"  # the old object is untouched
    assert not store.exists("k/fresh")
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["obj"]  # no temp files left
    assert store.list_keys() == ["k/obj"]


def test_filesystem_partial_write_is_never_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupt the write after the data hit the disk but before the rename: the key shows
    nothing (not a prefix of the data), and the listing does not show the temporary file."""
    store = FilesystemBlobStore(tmp_path)
    seen: dict[str, Any] = {}
    real_fsync = os.fsync

    def interrupted(fd: int) -> None:
        real_fsync(fd)
        seen["exists"] = store.exists("x/obj")
        seen["keys"] = store.list_keys()
        seen["tmp_files"] = [p.name for p in (tmp_path / "x").iterdir()]
        raise KeyboardInterrupt  # e.g. the worker is killed mid-put

    monkeypatch.setattr(blobs.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.put_bytes("x/obj", b"payload" * 10_000)
    monkeypatch.undo()
    assert seen["exists"] is False and seen["keys"] == []
    assert len(seen["tmp_files"]) == 1 and seen["tmp_files"][0] != "obj"
    assert not store.exists("x/obj")
    assert list((tmp_path / "x").iterdir()) == []  # the temp file was removed


def test_s3_failed_put_leaves_nothing(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3BlobStore(s3_bucket, endpoint_url=s3_endpoint)
    store.put_bytes("k/obj", b"old")
    calls: list[str] = []

    def count(**kwargs: Any) -> None:
        calls.append(kwargs["event_name"])

    def fail(**kwargs: Any) -> None:
        raise ConnectionError("network cut mid-upload")

    events = store.client.meta.events
    events.register("before-send.s3", count)
    store.put_bytes("k/one-request", b"x" * 100_000)
    assert calls == ["before-send.s3.PutObject"]  # one PutObject: all or nothing

    events.register("before-send.s3.PutObject", fail)
    with pytest.raises(ConnectionError):
        store.put_bytes("k/obj", b"new")
    with pytest.raises(ConnectionError):
        store.put_bytes("k/fresh", b"new")
    events.unregister("before-send.s3.PutObject", fail)
    assert store.get_bytes("k/obj") == b"old"
    assert not store.exists("k/fresh")


def test_s3_prefixes_isolate_stores(s3_endpoint: str, s3_bucket: str) -> None:
    a = S3BlobStore(s3_bucket, "one", endpoint_url=s3_endpoint)
    b = S3BlobStore(s3_bucket, "one/two/", endpoint_url=s3_endpoint)
    a.put_bytes("x", b"a")
    b.put_bytes("x", b"b")
    assert a.get_bytes("x") == b"a" and b.get_bytes("x") == b"b"
    assert b.list_keys() == ["x"]
    assert a.list_keys() == ["two/x", "x"]
    assert b.delete_prefix("x") == 1 and a.get_bytes("x") == b"a"


# --- factory ------------------------------------------------------------------------------------


def test_blob_store_from_url(tmp_path: Path) -> None:
    relative = blob_store_from_url("file://.sift/blobs")
    assert isinstance(relative, FilesystemBlobStore)
    assert relative.root == Path.cwd() / ".sift" / "blobs"
    absolute = blob_store_from_url(f"file://{tmp_path}")
    assert isinstance(absolute, FilesystemBlobStore) and absolute.root == tmp_path
    s3 = blob_store_from_url("s3://bucket/some/prefix", "http://localhost:9000")
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == (
        "bucket",
        "some/prefix/",
        "http://localhost:9000",
    )
    bare = blob_store_from_url("s3://bucket")
    assert isinstance(bare, S3BlobStore) and bare.prefix == ""
    for bad in ("gs://bucket", "file://", "s3://", "/plain/path", "s3://b/../x"):
        with pytest.raises(ValueError):
            blob_store_from_url(bad)


def test_put_file_streams_from_the_position(store: BlobStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    with open(tmp_path / "src", "w+b") as f:
        f.write(b"skip" + data)
        f.seek(4)
        store.put_file("uploads/run/step.safetensors", f)
    assert store.get_bytes("uploads/run/step.safetensors") == data
    tenant = TenantBlobStore(store, "team-x")
    with open(tmp_path / "src", "rb") as f:
        tenant.put_file("a/b", f)
    assert tenant.get_bytes("a/b") == b"skip" + data
    assert store.exists("tenants/team-x/a/b")


def test_s3_put_file_in_parts_or_not_at_all(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the threshold put_file is a multipart upload: whole, or (a part failing) nothing."""
    store = S3BlobStore(s3_bucket, endpoint_url=s3_endpoint)
    monkeypatch.setattr(S3BlobStore, "multipart_threshold", 5 * 1024 * 1024)
    monkeypatch.setattr(S3BlobStore, "multipart_chunksize", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    (tmp_path / "big").write_bytes(data)
    calls: list[str] = []

    def count(**kwargs: Any) -> None:
        calls.append(kwargs["event_name"].rsplit(".", 1)[-1])

    events = store.client.meta.events
    events.register("before-send.s3", count)
    with open(tmp_path / "big", "rb") as f:
        store.put_file("k/big", f)
    assert store.get_bytes("k/big") == data
    assert calls.count("UploadPart") == 3 and "CompleteMultipartUpload" in calls

    def fail(**kwargs: Any) -> None:
        raise ConnectionError("network cut mid-upload")

    events.register("before-send.s3.UploadPart", fail)
    with open(tmp_path / "big", "rb") as f, pytest.raises(ConnectionError):
        store.put_file("k/broken", f)
    events.unregister("before-send.s3.UploadPart", fail)
    assert not store.exists("k/broken")
