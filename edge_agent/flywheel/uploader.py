"""Uploads spooled samples at least once: the sha256 is the idempotency key, so a retry after a lost
response is recognised by the server. Success or "already have it" removes the sample; a refusal (4xx)
drops it with one log line; anything else (server down, 5xx, 429) retries with exponential backoff and
jitter, forever — the spool's quota, not the uploader, decides what is given up."""

from __future__ import annotations

import json
import logging
import random
import threading

import httpx

from edge_agent.flywheel.spool import Spool

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 300.0


class Uploader:
    def __init__(self, spool: Spool, server_url: str, device_id: str, token: str, interval_s: float = 0.5) -> None:
        self.spool, self.device_id, self.interval_s = spool, device_id, interval_s
        self.url = f"{server_url.rstrip('/')}/api/v1/devices/{device_id}/samples"
        self._http = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.uploaded = 0
        self.rejected = 0
        self.failures = 0

    def start(self) -> Uploader:
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.drain()
            except Exception:
                log.exception("uploader step failed")

    def drain(self) -> int:
        """Try every due sample once; returns how many left the spool."""
        gone = 0
        for p in self.spool.due():
            if self._stop.is_set():
                break
            try:
                data = p.path.read_bytes()
            except OSError:
                self.spool.done(p.key)
                continue
            try:
                r = self._http.post(
                    self.url,
                    headers={"Idempotency-Key": p.key},
                    files={"image": (f"{p.key}.jpg", data, "image/jpeg")},
                    data={"meta": json.dumps(p.meta)},
                )
            except httpx.HTTPError as exc:
                self._later(p.key, p.attempts, f"server unreachable: {exc}")
                continue
            if r.status_code in (200, 201):
                self.spool.done(p.key)
                self.uploaded += 1
                gone += 1
            elif 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                self.rejected += 1
                log.warning("sample %s refused (HTTP %d): %s", p.key[:12], r.status_code, r.text[:200])
                self.spool.done(p.key)
                gone += 1
            else:
                self._later(p.key, p.attempts, f"HTTP {r.status_code}")
        return gone

    def _later(self, key: str, attempts: int, why: str) -> None:
        self.failures += 1
        delay = min(MAX_BACKOFF_S, 1.0 * 2**attempts) * random.uniform(0.5, 1.0)
        if attempts == 0 or attempts % 10 == 0:
            log.info("sample upload deferred %.1fs: %s", delay, why)
        self.spool.retry_later(key, delay)
