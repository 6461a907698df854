"""Where the server keeps files: the local data dir, and optionally S3-compatible object storage.

With `storage_url` set (e.g. `s3://edgeloop/prod?endpoint=http://minio:9000&region=us-east-1`), the bucket
is the source of truth for artifacts and sample images and the local folders are a read-through cache:
a replica that never saw a file fetches it from the bucket on first use. Credentials come from the usual
AWS environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or an instance role); they are never logged.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(RuntimeError):
    """Object storage is misconfigured or unreachable (the message says which and how to fix it)."""


class Remote(Protocol):
    def check(self) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def fetch(self, key: str, dest: Path) -> bool: ...
    def delete(self, key: str) -> None: ...
    def describe(self) -> str: ...
    def list(self, prefix: str, delimiter: str | None = None) -> list[str]: ...


class S3Remote:
    """An S3 bucket (AWS, MinIO, Ceph RGW, Garage, ...) through boto3."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        if u.scheme != "s3" or not u.netloc:
            raise StorageError(f"storage URL must look like s3://BUCKET/PREFIX?endpoint=URL&region=R, not {url!r}")
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        unknown = set(q) - {"endpoint", "region", "addressing"}
        if unknown:
            raise StorageError(f"unknown storage URL option(s) {sorted(unknown)}: use endpoint, region, addressing")
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise StorageError("S3 storage needs boto3: pip install 'edgeloop[s3]'") from exc
        self.bucket, self.prefix = u.netloc, u.path.strip("/")
        self.endpoint = q.get("endpoint")
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=q.get("region", "us-east-1"),
            config=Config(
                s3={"addressing_style": q.get("addressing", "path")},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot use bucket {self.describe()}: {exc}") from exc

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def fetch(self, key: str, dest: Path) -> bool:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".fetch")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp)
        except ClientError as exc:
            os.unlink(tmp)
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, dest)
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str, delimiter: str | None = None) -> list[str]:
        """Keys under `prefix` (relative to the URL's prefix); with a delimiter, the keys and the common
        prefixes one level down (ending in the delimiter), as S3 lists them."""
        strip = len(self._key(""))
        args: dict[str, str] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if delimiter:
            args["Delimiter"] = delimiter
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(**args):
            out += [o["Key"][strip:] for o in page.get("Contents", [])]
            out += [c["Prefix"][strip:] for c in page.get("CommonPrefixes", [])]
        return out


def open_remote(url: str | None) -> Remote | None:
    if not url:
        return None
    remote = S3Remote(url)
    remote.check()
    log.info("object storage: %s", remote.describe())
    return remote


class Blobs:
    """Files under `root` by key (`ab/abcdef...`), mirrored to `remote` under `<prefix>/<key>` when there is one."""

    def __init__(self, root: Path, remote: Remote | None = None, prefix: str = "") -> None:
        self.root, self.remote, self.prefix = root, remote, prefix
        self.root.mkdir(parents=True, exist_ok=True)
        self.errors: Counter[str] = Counter()  # failed writes, reads and deletes by operation (for /metrics)

    def _counted(self, op: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (OSError, StorageError):
            self.errors[op] += 1
            raise
        except Exception as exc:  # noqa: BLE001 - botocore's errors are not OSError; counted, then raised
            if type(exc).__module__.startswith(("botocore", "boto3", "s3transfer")):
                self.errors[op] += 1
            raise

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"bad blob key {key!r}")
        return self.root.joinpath(*parts)

    def put_file(self, key: str, src: Path, move: bool = False) -> Path:
        """Atomically place `src` at `key` (fsynced), then upload it; the upload fails loudly, not silently."""
        return self._counted("write", lambda: self._put_file(key, src, move))

    def _put_file(self, key: str, src: Path, move: bool) -> Path:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        if move:
            os.replace(src, tmp)
        else:
            shutil.copyfile(src, tmp)  # streamed: artifacts can be hundreds of MB
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        if self.remote is not None:
            self.remote.put_file(f"{self.prefix}{key}", dest)
        return dest

    def put_bytes(self, key: str, data: bytes) -> Path:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.new")
        tmp.write_bytes(data)
        return self.put_file(key, tmp, move=True)

    def local(self, key: str) -> Path | None:
        """The file, fetched from the remote into the cache if this replica has not got it; None if nowhere."""
        p = self.path(key)
        if p.exists():
            return p
        remote = self.remote
        if remote is not None and self._counted("read", lambda: remote.fetch(f"{self.prefix}{key}", p)):
            return p
        return None

    def read(self, key: str) -> bytes:
        p = self.local(key)
        if p is None:
            raise FileNotFoundError(f"{self.prefix}{key} is in neither the local store nor object storage")
        return p.read_bytes()

    def delete(self, key: str) -> None:
        self._counted("delete", lambda: self._delete(key))

    def _delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        if self.remote is not None:
            self.remote.delete(f"{self.prefix}{key}")
