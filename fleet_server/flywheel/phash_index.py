"""Recent sample hashes with their ids, searched by Hamming distance in one vectorised pass.

Each replica keeps its own index and catches up from the database before a lookup (one indexed query
for ids above the newest it holds), so near-duplicates are found across replicas, not only among one
replica's uploads.
"""

from __future__ import annotations

import threading

import numpy as np
from sqlmodel import Session, col, select

from fleet_server.flywheel.tables import Sample

INDEX_SIZE = 100_000


class PhashIndex:
    def __init__(self, capacity: int = INDEX_SIZE) -> None:
        self.h = np.zeros(capacity, np.uint64)
        self.ids = np.zeros(capacity, np.int64)
        self.n = self.next = 0
        self.lock = threading.Lock()
        self.last_id = 0  # the newest sample id in the index

    def add(self, h: int, sample_id: int) -> None:
        with self.lock:
            if sample_id <= self.last_id:
                return  # already in (added after this replica's own insert, then seen again in the catch-up)
            self.last_id = sample_id
            self.h[self.next], self.ids[self.next] = np.uint64(h), sample_id
            self.next = (self.next + 1) % len(self.h)
            self.n = min(self.n + 1, len(self.h))

    def nearest(self, h: int) -> tuple[int, int | None]:
        """(Hamming distance, sample id) of the closest hash; (65, None) when the index is empty."""
        with self.lock:
            if self.n == 0:
                return 65, None
            d = np.bitwise_count(self.h[: self.n] ^ np.uint64(h))
            i = int(d.argmin())
            return int(d[i]), int(self.ids[i])

    def catch_up(self, session: Session) -> PhashIndex:
        """Add the samples any replica stored since the last look."""
        q = select(Sample.id, Sample.phash).where(col(Sample.id) > self.last_id)
        rows = session.exec(q.order_by(col(Sample.id).desc()).limit(len(self.h))).all()
        for sid, ph in reversed(rows):
            self.add(int(ph, 16), int(sid or 0))
        return self
