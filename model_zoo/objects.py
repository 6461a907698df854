"""Object storage, and the files of a job by path relative to a data root (the same layout everywhere).

`S3Remote` is the one client for an S3-compatible bucket (AWS, MinIO, Ceph RGW, Garage, ...) that the server
(fleet_server/blobs.py), the dataset store and training jobs use. Credentials come from the usual AWS
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or an instance role); they are never logged.

`JobFiles` is what a job reads and writes. The server's data dir and the bucket (`EDGELOOP_STORAGE_URL`)
share one layout: `datasets/…`, `checkpoints/NAME/V.pt`, `artifacts/ab/SHA`, `jobs/ID/…` (params,
checkpoints under `run/`, compiled files, result, logs). A job's parameters name its inputs by these
relative paths; the worker resolves them under its own root (the server's data dir for a local worker,
`EDGELOOP_CACHE_DIR` on a Ray node), fetching from the bucket what that host lacks and writing back what it
makes. So a worker on any host needs nothing from the server's disk, and a job resumed elsewhere continues
from the checkpoint its last host uploaded. Without a bucket the root is the server's data dir and nothing
moves.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)


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


def cache_root() -> Path:
    """Where a worker away from the server keeps its copies (EDGELOOP_CACHE_DIR, ~/.cache/edgeloop otherwise)."""
    return Path(os.environ.get("EDGELOOP_CACHE_DIR") or Path.home() / ".cache" / "edgeloop")


class JobFiles:
    def __init__(self, root: Path, remote: Remote | None = None) -> None:
        self.root, self.remote = Path(root), remote

    @classmethod
    def open(cls, root: Path, storage_url: str | None) -> JobFiles:
        return cls(root, open_remote(storage_url) if storage_url else None)

    def path(self, rel: str | Path) -> Path:
        """The local path of `rel` (an absolute path, from a job queued before relative paths, stays as it is)."""
        p = Path(rel)
        if not p.is_absolute() and any(part in ("", "..") for part in p.parts):
            raise ValueError(f"bad job path {rel!r}")
        return self.root / p

    def rel(self, path: Path) -> str:
        """`path` relative to the root (a path outside it, from an older job, stays absolute)."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def fetch(self, rel: str | Path, what: str = "file") -> Path:
        """`rel` on this host, fetched from the bucket first if it is not here; FileNotFoundError naming it."""
        p = self.fetch_optional(rel)
        if p is None:
            where = f" nor in object storage ({self.remote.describe()})" if self.remote is not None else ""
            raise FileNotFoundError(f"{what} {rel} is neither under {self.root}{where}")
        return p

    def fetch_optional(self, rel: str | Path) -> Path | None:
        p = self.path(rel)
        if p.is_file():
            return p
        if self.remote is not None and not Path(rel).is_absolute() and self.remote.fetch(Path(rel).as_posix(), p):
            return p
        return None

    def put(self, path: Path) -> None:
        """Upload a file under the root to the same relative key (nothing to do without a bucket)."""
        rel = self.rel(path)
        if self.remote is not None and not Path(rel).is_absolute():
            self.remote.put_file(rel, path)

    def put_tree(self, folder: Path) -> None:
        if self.remote is not None and folder.is_dir():
            for p in sorted(folder.rglob("*")):
                if p.is_file() and not p.name.startswith("."):
                    self.put(p)

    def localize(self, result: dict[str, Any]) -> dict[str, Any]:
        """A worker's result, its relative paths turned into local files (fetched from the bucket when the
        worker ran on another host), ready for the server to register."""
        out = dict(result)
        if out.get("checkpoint"):
            out["checkpoint"] = str(self.fetch(out["checkpoint"], "checkpoint"))
        if out.get("compiled"):
            out["compiled"] = str(self.path(out["compiled"]))
        report = out.get("report")
        if isinstance(report, dict):
            rows = []
            for r in report.get("results", []):
                if r.get("status") == "built" and r.get("path"):
                    r = {**r, "path": str(self.fetch(r["path"], f"compiled {r.get('target')} artifact"))}
                rows.append(r)
            out["report"] = {**report, "results": rows}
        return out
