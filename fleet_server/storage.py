"""Content-addressed artifact store on the local filesystem: files are named by their sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path


class TooLarge(Exception):
    pass


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

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
        dest = self.path(sha256)
        dest.parent.mkdir(exist_ok=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        return dest
