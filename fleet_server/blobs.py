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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from model_zoo.objects import Remote, S3Remote, StorageError, open_remote

__all__ = ["Blobs", "Remote", "S3Remote", "StorageError", "open_remote"]

log = logging.getLogger(__name__)
T = TypeVar("T")


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
