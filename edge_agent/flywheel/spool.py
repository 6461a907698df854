"""A crash-safe on-disk queue of samples waiting for upload.

Images are written temp → fsync → rename into `images/<sha256>.jpg`, then their row is committed to a
SQLite database in WAL mode; a sample is "accepted" only once its row is committed. On open, temp files
and images without a row (a crash between rename and commit) are removed; rows whose image vanished are
dropped and counted. The spool is bounded by a byte quota. Eviction policy, stated: when a new sample
would pass the quota, the oldest samples of the random baseline go first, then the oldest of any
strategy; the new sample is always kept. Every eviction is counted. One process owns a spool folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sample (
    key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    strategy TEXT NOT NULL,
    size INTEGER NOT NULL,
    meta TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sample_next ON sample (next_try);
"""


@dataclass(frozen=True)
class Pending:
    key: str
    strategy: str
    meta: dict[str, Any]
    attempts: int
    path: Path


class Spool:
    def __init__(self, root: Path, quota_bytes: int = 200 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.images = self.root / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.quota = quota_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "spool.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.evicted = 0
        self.lost = 0
        self._gone: set[str] = set()  # uploaded, image deleted, index row not yet (a full disk refused it)
        self._recover()

    def _recover(self) -> None:
        with self._lock:
            for p in self.images.glob(".*.tmp"):
                p.unlink(missing_ok=True)
            keys = {r[0] for r in self._db.execute("SELECT key FROM sample")}
            for p in self.images.glob("*.jpg"):
                if p.stem not in keys:
                    p.unlink(missing_ok=True)  # renamed but never committed: not accepted, not lost
            for key in keys:
                if not (self.images / f"{key}.jpg").exists():
                    self._db.execute("DELETE FROM sample WHERE key = ?", (key,))
                    self.lost += 1
            if self.lost:
                log.warning("spool: %d committed samples had no image file (disk error?) and were dropped", self.lost)

    def put(self, jpeg: bytes, strategy: str, meta: dict[str, Any]) -> str | None:
        """Store one sample durably; returns its key (sha256), or None if it is already queued."""
        key = hashlib.sha256(jpeg).hexdigest()
        path = self.images / f"{key}.jpg"
        with self._lock:
            if self._db.execute("SELECT 1 FROM sample WHERE key = ?", (key,)).fetchone():
                return None
            self._make_room(len(jpeg))
            tmp = self.images / f".{key}.tmp"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(jpeg)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
                self._db.execute(
                    "INSERT INTO sample (key, created, strategy, size, meta) VALUES (?, ?, ?, ?, ?)",
                    (key, time.time(), strategy, len(jpeg), json.dumps(meta)),
                )
            except (OSError, sqlite3.Error) as exc:
                # a full disk: this sample is not accepted, and nothing of it may stay behind to fill the disk
                # further; every sample accepted before stays as it was
                tmp.unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                raise OSError(getattr(exc, "errno", None) or 28, f"spool: cannot store the sample: {exc}") from exc
        return key

    def _make_room(self, incoming: int) -> None:
        used = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM sample").fetchone()[0]
        while used + incoming > self.quota:
            row = self._db.execute(
                "SELECT key, size FROM sample ORDER BY (strategy != 'random'), created LIMIT 1"
            ).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM sample WHERE key = ?", (row[0],))
            (self.images / f"{row[0]}.jpg").unlink(missing_ok=True)
            used -= row[1]
            self.evicted += 1

    def due(self, now: float | None = None, limit: int = 8) -> list[Pending]:
        now = time.time() if now is None else now
        with self._lock:
            if self._gone:
                self._forget()
            rows = self._db.execute(
                "SELECT key, strategy, meta, attempts FROM sample WHERE next_try <= ? ORDER BY created LIMIT ?",
                (now, limit),
            ).fetchall()
        return [Pending(k, s, json.loads(m), a, self.images / f"{k}.jpg") for k, s, m, a in rows if k not in self._gone]

    def done(self, key: str) -> None:
        """An uploaded sample leaves the spool. The image goes first: on a full disk the record's delete needs
        the room it frees (SQLite's journal grows before it shrinks). A delete that still fails is kept in
        memory and retried, and the sample is never offered again."""
        with self._lock:
            (self.images / f"{key}.jpg").unlink(missing_ok=True)
            self._gone.add(key)
            self._forget()

    def _forget(self) -> None:
        for key in list(self._gone):
            try:
                self._db.execute("DELETE FROM sample WHERE key = ?", (key,))
            except sqlite3.Error as exc:
                log.warning("spool: cannot yet remove %d uploaded sample(s) from the index: %s", len(self._gone), exc)
                return
            self._gone.discard(key)

    def retry_later(self, key: str, delay_s: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE sample SET attempts = attempts + 1, next_try = ? WHERE key = ?", (time.time() + delay_s, key)
            )

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM sample").fetchone()[0]) - len(self._gone)

    def bytes_used(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM sample").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
