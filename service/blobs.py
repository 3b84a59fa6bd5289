"""Blob storage for large artifacts (adapters, optimizer states, feature shards, scores).

Two backends with one protocol, side by side:

- :class:`FilesystemBlobStore` -- a directory; a put writes a temporary file in the target
  directory, fsyncs it and ``os.replace``-s it over the final name, so a reader sees either
  nothing or the whole object, never a prefix of it.
- :class:`S3BlobStore` -- a bucket (plus an optional key prefix) through boto3; a single
  ``PutObject`` is atomic. The bucket is created on first use if it is missing (convenient for
  development and tests; in production create it beforehand and grant only object access).

Keys are ``/``-separated relative paths: no empty, ``.`` or ``..`` segments, no leading ``/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Protocol, runtime_checkable

from fastapi import Depends

from service.config import Settings, get_settings

_TMP_PREFIX = ".sift-tmp-"
_COPY_CHUNK = 1 << 20


class BlobNotFound(LookupError):
    """No object under this key."""


@runtime_checkable
class BlobStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (replacing any previous object)."""
        ...

    def put_file(self, key: str, f: BinaryIO) -> None:
        """Store the rest of the readable file ``f`` (from its position to its end) under
        ``key`` atomically, reading it in chunks: for objects too large to hold in memory."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises :class:`BlobNotFound`."""
        ...

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix), sorted."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` (non-empty); returns how many."""
        ...

    def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``ValueError``."""
    if not isinstance(key, str) or not key:
        raise ValueError("blob key must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"blob key {key!r} must be relative and '/'-separated")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"blob key {key!r} has an empty, '.' or '..' segment")
        if segment.startswith(_TMP_PREFIX):
            raise ValueError(f"blob key {key!r} uses the reserved prefix {_TMP_PREFIX!r}")
    return key


def validate_prefix(prefix: str, *, allow_empty: bool = True) -> str:
    """A prefix is a key, optionally ending in '/', or (when allowed) empty."""
    if prefix == "":
        if not allow_empty:
            raise ValueError("an empty prefix would match every blob")
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class FilesystemBlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._put(key, lambda out: out.write(data))

    def put_file(self, key: str, f: BinaryIO) -> None:
        self._put(key, lambda out: shutil.copyfileobj(f, out, _COPY_CHUNK))

    def _put(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _walk(self, under: str = "") -> list[str]:
        """Final keys in the folder ``under`` (relative, '' for all) and below."""
        start = self.root / under if under else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                keys.append(name if rel == "." else f"{rel}/{name}")
        return keys

    def list_keys(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""  # walk only what can match
        return sorted(k for k in self._walk(folder) if k.startswith(prefix))

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix, allow_empty=False)
        keys = self.list_keys(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        # Prune directories left empty under the root.
        for key in keys:
            parent = self._path(key).parent
            while parent != self.root:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
        return len(keys)

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"blob root {self.root} is not writable")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class S3BlobStore:
    multipart_threshold = 64 * 1024 * 1024
    multipart_chunksize = 16 * 1024 * 1024

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self._client = client
        self._bucket_ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # imported lazily: only S3 deployments pay for it

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
        if not self._bucket_ready:
            with self._lock:
                if not self._bucket_ready:
                    self._ensure_bucket(self._client)
                    self._bucket_ready = True
        return self._client

    def _ensure_bucket(self, client: Any) -> None:
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if _error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        region = client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as e:
            if _error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, f: BinaryIO) -> None:
        """A multipart upload above ``multipart_threshold`` (completed atomically, aborted on
        failure); at most 4 parts of ``multipart_chunksize`` in flight, so memory stays bounded
        whatever the size."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=4,
        )
        self.client.upload_fileobj(f, self.bucket, self._key(key), Config=config)

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404", "NotFound"):
                raise BlobNotFound(key) from None
            raise
        body: bytes = response["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix, allow_empty=False)
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def _error_code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def blob_store_from_url(url: str, s3_endpoint_url: str | None = None) -> BlobStore:
    """``file://relative/dir``, ``file:///abs/dir`` or ``s3://bucket/optional/prefix``."""
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path:
            raise ValueError(f"blob url {url!r} names no directory")
        return FilesystemBlobStore(path)
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        return S3BlobStore(bucket, prefix, endpoint_url=s3_endpoint_url)
    raise ValueError(f"unsupported blob url {url!r}: use file://... or s3://bucket/prefix")


def blob_store_from_settings(settings: Settings) -> BlobStore:
    return blob_store_from_url(settings.blob_url, settings.s3_endpoint_url)


TENANTS_DIR = "tenants/"


def tenant_prefix(tenant_id: str) -> str:
    """Where a tenant's blobs live: ``tenants/<id>/``; the rows that predate tenancy (tenant
    ``default``) keep their keys at the root."""
    from service.tenancy import DEFAULT_TENANT_ID

    return "" if tenant_id == DEFAULT_TENANT_ID else f"{TENANTS_DIR}{validate_key(tenant_id)}/"


class TenantBlobStore:
    """One tenant's view of a store: every key is under :func:`tenant_prefix`, so a key held
    by one tenant's row can never name another tenant's object."""

    def __init__(self, store: BlobStore, tenant_id: str) -> None:
        self.store, self.tenant_id = store, tenant_id
        self.prefix = tenant_prefix(tenant_id)

    def __repr__(self) -> str:
        return f"TenantBlobStore({self.store!r}, {self.tenant_id!r})"

    def _key(self, key: str) -> str:
        if not self.prefix and key.startswith(TENANTS_DIR):  # tenant "default" at the root
            raise ValueError(f"blob key {key!r} is in another tenant's part of the store")
        return self.prefix + validate_key(key)

    def _prefix(self, prefix: str, *, allow_empty: bool = True) -> str:
        if not self.prefix and prefix.startswith(TENANTS_DIR.rstrip("/")):
            raise ValueError(f"blob prefix {prefix!r} is in another tenant's part of the store")
        return self.prefix + validate_prefix(prefix, allow_empty=allow_empty)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.store.put_bytes(self._key(key), data)

    def put_file(self, key: str, f: BinaryIO) -> None:
        self.store.put_file(self._key(key), f)

    def get_bytes(self, key: str) -> bytes:
        return self.store.get_bytes(self._key(key))

    def exists(self, key: str) -> bool:
        return self.store.exists(self._key(key))

    def list_keys(self, prefix: str = "") -> list[str]:
        n = len(self.prefix)
        keys = self.store.list_keys(self._prefix(prefix))
        return [k[n:] for k in keys if self.prefix or not k.startswith(TENANTS_DIR)]

    def delete_prefix(self, prefix: str) -> int:
        return self.store.delete_prefix(self._prefix(prefix, allow_empty=False))

    def ping(self) -> None:
        self.store.ping()


@lru_cache
def _store_for(url: str, s3_endpoint_url: str | None) -> BlobStore:
    return blob_store_from_url(url, s3_endpoint_url)


async def get_blob_store() -> BlobStore:
    """The process-wide store for the current settings (a FastAPI dependency, overridable;
    async: no I/O, so no thread hop)."""
    settings = get_settings()
    return _store_for(settings.blob_url, settings.s3_endpoint_url)


RawBlobStoreDep = Annotated[BlobStore, Depends(get_blob_store)]
"""The whole store: for health checks only; ``/v1`` endpoints take the tenant's part,
``service.auth.dependencies.BlobStoreDep``."""
