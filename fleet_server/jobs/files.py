"""What a job reads and writes, by path relative to a data root that is the same layout on every host.

The server's data dir and the bucket (`EDGELOOP_STORAGE_URL`) share one layout: `datasets/…`,
`checkpoints/NAME/V.pt`, `artifacts/ab/SHA`, `jobs/ID/…` (params, checkpoints under `run/`, compiled
files, result, logs). A job's parameters name its inputs by these relative paths; the worker resolves them
under its own root (the server's data dir for a local worker, `EDGELOOP_CACHE_DIR` on a Ray node), fetching
from the bucket what that host lacks and writing back what it makes. So a worker on any host needs nothing
from the server's disk, and a job resumed elsewhere continues from the checkpoint its last host uploaded.
Without a bucket the root is the server's data dir and nothing moves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fleet_server.blobs import Remote, open_remote


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
