"""The mining sink: runs on the loop's sink thread (never the inference thread), asks each miner in turn,
applies the per-strategy rate limits and the per-camera diversity budget, drops near-duplicates of what was
recently sent, and spools the frame with the model's predictions as pre-annotations."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from typing import Any

import cv2

from edge_agent.camera.loop import FrameResult
from edge_agent.decoders.base import Result
from edge_agent.decoders.results import Classification
from edge_agent.flywheel.config import MiningConfig
from edge_agent.flywheel.miners import Miner, build_miner
from edge_agent.flywheel.phash import HashIndex, phash
from edge_agent.flywheel.spool import Spool

log = logging.getLogger(__name__)
WINDOWS = {"per_minute": 60.0, "per_hour": 3600.0, "per_day": 86400.0}


class RateLimiter:
    """Sliding windows of send times per key."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, key: str, limits: Mapping[str, int | None], now: float) -> bool:
        q = self._times[key]
        while q and now - q[0] > 86400.0:
            q.popleft()
        for name, span in WINDOWS.items():
            cap = limits.get(name)
            if cap is not None and sum(1 for t in q if now - t <= span) >= cap:
                return False
        return True

    def record(self, key: str, now: float) -> None:
        self._times[key].append(now)


def predictions(result: Result, classes: tuple[str, ...]) -> list[dict[str, Any]]:
    if isinstance(result, Classification):
        return [{"label": classes[i], "score": round(s, 4)} for i, s in result.topk(3)]
    return [
        {"label": classes[int(c)], "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
        for b, s, c in zip(result.xyxy, result.scores, result.class_ids, strict=True)
    ]


class MiningSink:
    def __init__(self, cfg: MiningConfig, spool: Spool, device_id: str, classes_of: Any) -> None:
        self.cfg, self.spool, self.device_id = cfg, spool, device_id
        self.classes_of = classes_of  # (model, version) -> class names
        self.miners: list[tuple[str, Miner, dict[str, int | None]]] = []
        for name, sc in cfg.strategies.items():
            limits = sc.limits.model_dump()
            if name == "disagreement":
                self.disagreement_limits = limits
                self.disagreement_threshold = float(sc.params.get("max_agreement", 0.8))
                continue
            self.miners.append((name, build_miner(name, sc.params), limits))
        self.hashes = HashIndex(cfg.dedup_window)
        self.rates = RateLimiter()
        self.counters = {
            "mined": 0,
            "cooldown": 0,
            "duplicates": 0,
            "rate_limited": 0,
            "spooled": 0,
            "spool_errors": 0,
        }
        self._considered: dict[str, float] = {}

    def __call__(self, fr: FrameResult) -> None:
        for name, miner, limits in self.miners:
            reason = miner.check(fr)
            if reason is not None:
                self.offer(fr, name, reason, limits)
                return

    def on_disagreement(self, fr: FrameResult, shadow: Result, agreement: float) -> None:
        if hasattr(self, "disagreement_limits") and agreement < self.disagreement_threshold:
            self.offer(fr, "disagreement", f"agreement {agreement:.2f} with the shadow", self.disagreement_limits)

    def offer(self, fr: FrameResult, strategy: str, reason: str, limits: dict[str, int | None]) -> bool:
        self.counters["mined"] += 1
        now = time.monotonic()
        if now - self._considered.get(fr.source, -1e9) < self.cfg.min_interval_s:
            self.counters["cooldown"] += 1  # neighbouring frames of one camera are nearly the same scene
            return False
        budget = {"per_hour": self.cfg.per_source_per_hour}
        if not self.rates.allow(strategy, limits, now) or not self.rates.allow(f"src:{fr.source}", budget, now):
            self.counters["rate_limited"] += 1
            return False
        self._considered[fr.source] = now
        h = phash(fr.image)
        if self.hashes.seen(h, self.cfg.dedup_distance):
            self.counters["duplicates"] += 1
            return False
        ok, buf = cv2.imencode(".jpg", fr.image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            return False
        classes = self.classes_of(fr.model, fr.version)
        meta = {
            "device_id": self.device_id,
            "source": fr.source,
            "frame_index": fr.frame_index,
            "model": fr.model,
            "version": fr.version,
            "strategy": strategy,
            "reason": reason,
            "phash": f"{h:016x}",
            "captured_at": time.time(),
            "predictions": predictions(fr.result, classes),
        }
        try:
            key = self.spool.put(buf.tobytes(), strategy, meta)
        except OSError as exc:  # a full or failing disk must not stop the camera loop
            self.counters["spool_errors"] += 1
            log.warning("spool: cannot store a sample: %s", exc)
            return False
        self.rates.record(strategy, now)
        self.rates.record(f"src:{fr.source}", now)
        self.hashes.add(h)
        if key is not None:
            self.counters["spooled"] += 1
        return key is not None
