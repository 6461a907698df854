"""Content-addressed artifact store on the local filesystem: files are named by their sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fleet_server.blobs import Blobs, Remote


def datasets_dir(data_dir: Path) -> Path:
    """Where dataset versions live under the server's data folder."""
    return data_dir / "datasets"


class TooLarge(Exception):
    pass


class LocalStore:
    """Artifacts by sha256 under `root`; mirrored to object storage when a remote is given (see blobs.py)."""

    def __init__(self, root: Path, remote: Remote | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        self.blobs = Blobs(root, remote, prefix="artifacts/")

    @staticmethod
    def _key(sha256: str) -> str:
        return f"{sha256[:2]}/{sha256}"

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    async def receive(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[Path, str, int]:
        """Stream an upload to a temp file, hashing as it goes; TooLarge past `max_bytes`."""
        h = hashlib.sha256()
        n = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", suffix=".upload")
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    n += len(chunk)
                    if n > max_bytes:
                        raise TooLarge(f"upload exceeds {max_bytes} bytes")
                    h.update(chunk)
                    fh.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp), h.hexdigest(), n

    def commit(self, tmp: Path, sha256: str) -> Path:
        """Move an upload into the store (and the bucket)."""
        self.path(sha256)  # validates the digest
        return self.blobs.put_file(self._key(sha256), tmp, move=True)

    def add_copy(self, src: Path, sha256: str) -> Path:
        """Copy a file the server made (a compiled target) into the store, unless it is there already."""
        dest = self.path(sha256)
        return dest if dest.exists() else self.blobs.put_file(self._key(sha256), src)

    def ensure(self, sha256: str) -> Path | None:
        """The artifact's local file, fetched from the bucket if this replica has not got it yet."""
        self.path(sha256)
        return self.blobs.local(self._key(sha256))
