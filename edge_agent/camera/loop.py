"""The inference loop: newest frame -> preprocess -> infer -> decode -> sinks.

The serving model is one reference (`LoadedModel`) read once per frame, so `swap()` takes effect
between two frames: no frame is dropped or run twice. Sinks run on their own thread behind a bounded
queue, so a slow sink (network) never slows inference.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_agent.camera.sources import FrameSource
from edge_agent.decoders.base import Decoder, Result
from edge_agent.preprocess import Preprocessor
from edge_agent.protocol.manifest import Manifest
from edge_agent.runtimes.base import Runtime

log = logging.getLogger(__name__)


@dataclass
class ModelHealth:
    frames: int = 0
    errors: int = 0
    nan_outputs: int = 0
    last_error: str | None = None


@dataclass
class LoadedModel:
    manifest: Manifest
    runtime: Runtime
    preprocess: Preprocessor
    decode: Decoder
    health: ModelHealth = field(default_factory=ModelHealth)

    @property
    def ref(self) -> str:
        return self.manifest.ref


@dataclass
class FrameResult:
    frame_index: int
    model: str
    version: int
    result: Result
    latency_ms: float
    staleness_ms: float
    image: np.ndarray


Sink = Callable[[FrameResult], None]


class Stats:
    """Rolling window of per-frame figures for telemetry."""

    def __init__(self, window: int = 600) -> None:
        self._lock = threading.Lock()
        self.latency: deque[float] = deque(maxlen=window)
        self.staleness: deque[float] = deque(maxlen=window)
        self.times: deque[float] = deque(maxlen=window)
        self.frames = 0
        self.errors = 0

    def add(self, latency_ms: float, staleness_ms: float) -> None:
        with self._lock:
            self.latency.append(latency_ms)
            self.staleness.append(staleness_ms)
            self.times.append(time.monotonic())
            self.frames += 1

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            lat = np.asarray(self.latency, dtype=np.float64)
            st = np.asarray(self.staleness, dtype=np.float64)
            times = list(self.times)
        now = time.monotonic()
        recent = [t for t in times if now - t <= 5.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else 0.0

        def pct(a: np.ndarray, q: float) -> float:
            return float(np.percentile(a, q)) if a.size else 0.0

        return {
            "fps": round(fps, 2),
            "latency_ms_p50": round(pct(lat, 50), 3),
            "latency_ms_p95": round(pct(lat, 95), 3),
            "latency_ms_p99": round(pct(lat, 99), 3),
            "staleness_ms_p50": round(pct(st, 50), 3),
            "staleness_ms_p99": round(pct(st, 99), 3),
        }


class InferenceLoop:
    def __init__(self, source: FrameSource, sinks: list[Sink] | None = None, sink_queue: int = 8) -> None:
        self.source = source
        self.sinks = list(sinks or [])
        self.stats = Stats()
        self._model: LoadedModel | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._q: queue.Queue[FrameResult] = queue.Queue(maxsize=sink_queue)
        self.sink_dropped = 0
        self.last_result: FrameResult | None = None

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def swap(self, model: LoadedModel | None) -> LoadedModel | None:
        """Make `model` serve from the next frame on; returns the one it replaces."""
        old, self._model = self._model, model
        log.info("serving model %s (was %s)", model.ref if model else None, old.ref if old else None)
        return old

    def start(self) -> InferenceLoop:
        for name, target in (("infer", self._infer), ("sinks", self._sink)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def _infer(self) -> None:
        last = 0
        while not self._stop.is_set():
            model = self._model
            if model is None:
                self._stop.wait(0.05)
                continue
            frame = self.source.latest(after=last, timeout=0.25)
            if frame is None:
                continue
            last = frame.index
            model = self._model  # re-read: a swap during the wait applies to this frame
            if model is None:
                continue
            t0 = time.monotonic()
            try:
                x, tf = model.preprocess(frame.image)
                outputs = model.runtime.run(x)
                result = model.decode(outputs, tf)
            except Exception as exc:  # a bad frame or model must not kill the loop
                model.health.errors += 1
                self.stats.errors += 1
                if model.health.last_error != str(exc):
                    log.warning("inference failed on %s: %s", model.ref, exc)
                model.health.last_error = str(exc)
                continue
            t1 = time.monotonic()
            model.health.frames += 1
            if result.has_nan():
                model.health.nan_outputs += 1
            self.stats.add((t1 - t0) * 1000.0, (t1 - frame.t_capture) * 1000.0)
            fr = FrameResult(
                frame.index,
                model.manifest.model,
                model.manifest.version,
                result,
                (t1 - t0) * 1000.0,
                (t1 - frame.t_capture) * 1000.0,
                frame.image,
            )
            self.last_result = fr
            if self.sinks:
                try:
                    self._q.put_nowait(fr)
                except queue.Full:
                    self.sink_dropped += 1

    def _sink(self) -> None:
        while not self._stop.is_set():
            try:
                fr = self._q.get(timeout=0.25)
            except queue.Empty:
                continue
            for sink in self.sinks:
                try:
                    sink(fr)
                except Exception:
                    log.exception("sink %s failed", getattr(sink, "__name__", sink))
