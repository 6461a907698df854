"""The inference loop: newest frame of each source -> preprocess -> infer -> decode -> sinks.

One inference thread serves every source (they share one model). Each turn it takes the newest unseen
frame of up to `batch` sources, oldest first, into one batch (the model runs once and the results are
split per frame; a batch-1 model takes one frame per turn), so no source starves and none builds a
backlog. The serving model is one reference (`LoadedModel`) read once per batch, so `swap()` takes
effect between two batches: no frame is dropped or run twice. Sinks run on their own thread behind a
bounded queue, so a slow sink (network) never slows inference. A shadow model, when set, runs on its
own thread on a share of frames and scores its agreement with the serving model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.camera.model import LoadedModel, ModelHealth
from edge_agent.camera.sources import Frame, FrameSource
from edge_agent.decoders.agreement import agreement
from edge_agent.decoders.base import Result
from edge_agent.runtimes.fallback import GPU_FAULTS_BEFORE_CPU, is_gpu_fault, on_cpu

log = logging.getLogger(__name__)
__all__ = ["FrameResult", "InferenceLoop", "LoadedModel", "ModelHealth", "ShadowRun", "Stats"]


@dataclass
class FrameResult:
    source: str
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

    def fps(self, window_s: float = 5.0) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self.times if now - t <= window_s]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            lat = np.asarray(self.latency, dtype=np.float64)
            st = np.asarray(self.staleness, dtype=np.float64)

        def pct(a: np.ndarray, q: float) -> float:
            return round(float(np.percentile(a, q)), 3) if a.size else 0.0

        return {
            "fps": round(self.fps(), 2),
            "latency_ms_p50": pct(lat, 50),
            "latency_ms_p95": pct(lat, 95),
            "latency_ms_p99": pct(lat, 99),
            "staleness_ms_p50": pct(st, 50),
            "staleness_ms_p99": pct(st, 99),
        }


@dataclass
class ShadowRun:
    """A candidate model scored against the serving one on a share of frames."""

    model: LoadedModel
    share: float
    frames: int = 0
    skipped: int = 0
    agree_sum: float = 0.0
    errors: int = 0
    _credit: float = 0.0

    @property
    def agreement(self) -> float | None:
        return round(self.agree_sum / self.frames, 4) if self.frames else None

    def wants_frame(self) -> bool:
        self._credit += self.share  # deterministic sampling: exactly `share` of frames over time
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False


class InferenceLoop:
    def __init__(
        self,
        sources: FrameSource | list[FrameSource],
        sinks: list[Sink] | None = None,
        sink_queue: int = 8,
        batch: int = 1,
        gather_ms: float = 0.0,
        preprocess_threads: int = 1,
        auto_batch: bool = False,
    ) -> None:
        self.sources = sources if isinstance(sources, list) else [sources]
        self.batch = max(1, batch)  # most frames one run takes (the model may take fewer: its own limit wins)
        self.auto_batch = auto_batch  # each model's batch measured on load, up to `batch` (choose_batch)
        self.gather_s = max(0.0, gather_ms) / 1000.0  # how long a batch may wait for more fresh frames
        self.batch_sizes: Counter[int] = Counter()  # runs per batch size
        # >1: a batch's frames are preprocessed on that many threads. Off by default: measured on an H200 box
        # (16 cores, 8 cameras), 8 threads made a batch of 8 take 120 ms instead of 11 ms, OpenCV's own
        # threads inside each resize fighting the pool's
        self._pool = ThreadPoolExecutor(preprocess_threads, "preprocess") if preprocess_threads > 1 else None
        self.sinks = list(sinks or [])
        self.stats = Stats()
        self.source_stats = {s.name: Stats() for s in self.sources}
        self._model: LoadedModel | None = None
        self.shadow: ShadowRun | None = None
        self.disagreement_hooks: list[Callable[[FrameResult, Result, float], None]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        for s in self.sources:
            s.add_listener(self._wake)
        self._threads: list[threading.Thread] = []
        self._q: queue.Queue[FrameResult] = queue.Queue(maxsize=sink_queue)
        self._shadow_q: queue.Queue[tuple[FrameResult, ShadowRun]] = queue.Queue(maxsize=1)
        self.sink_dropped = 0
        self.last_result: FrameResult | None = None
        self._last_index = {s.name: 0 for s in self.sources}

    @property
    def source(self) -> FrameSource:
        return self.sources[0]

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def swap(self, model: LoadedModel | None) -> LoadedModel | None:
        """Make `model` serve from the next batch on; returns the one it replaces. A batching model first runs
        each batch shape it will see (on this caller's thread: the old model serves meanwhile)."""
        if model is not None and self.auto_batch and model.batch_choice is None:
            model.batch_choice = model.choose_batch(max(1, min(self.batch, len(self.sources))))
            log.info(
                "%s: batch %d chosen by measurement (%d cameras)", model.ref, model.batch_choice, len(self.sources)
            )
        if model is not None and self.batch_limit(model) > 1:
            model.warm(self.batch_limit(model))
        old, self._model = self._model, model
        if model is not None:
            model.health.started = time.monotonic()
            if self.batch > 1 and self.batch_limit(model) < self.batch:
                why = (
                    "has no dynamic batch axis" if model.max_batch == 1 else f"takes a fixed batch of {model.max_batch}"
                )
                log.info(
                    "%s %s: serving %d frame(s) per run, not %d", model.ref, why, self.batch_limit(model), self.batch
                )
        log.info("serving model %s (was %s)", model.ref if model else None, old.ref if old else None)
        return old

    def set_sources(self, sources: list[FrameSource]) -> None:
        """Serve these cameras from the next batch on (a slot's cameras reassigned by the desired state)."""
        for s in sources:
            if s.name not in self._last_index:
                s.add_listener(self._wake)
                self._last_index[s.name] = 0
                self.source_stats[s.name] = Stats()
        self.sources = list(sources)  # one reference swap: the inference thread reads the list once per turn
        self._wake.set()

    def set_shadow(self, model: LoadedModel | None, share: float = 0.1) -> ShadowRun | None:
        old = self.shadow
        self.shadow = ShadowRun(model, max(0.0, min(1.0, share))) if model is not None else None
        return old

    def start(self) -> InferenceLoop:
        for name, target in (("infer", self._infer), ("sinks", self._sink), ("shadow", self._shadow)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def queue_depth(self) -> int:
        return self._q.qsize()

    # -- inference thread --------------------------------------------------------------------
    def batch_limit(self, model: LoadedModel) -> int:
        cap = model.max_batch
        want = model.batch_choice if model.batch_choice is not None else self.batch
        return 1 if cap == 1 else min(want, cap or want)

    def _fresh(self) -> list[tuple[FrameSource, Frame]]:
        out = []
        for s in self.sources:
            f = s.peek()
            if f is not None and f.index > self._last_index[s.name]:
                out.append((s, f))
        return out

    def _next_frames(self, limit: int) -> list[tuple[FrameSource, Frame]]:
        """The newest unseen frame of up to `limit` sources, oldest first (fairness: the source waiting longest
        goes first). Never waits for a full batch unless `gather_ms` allows it, and then only that long."""
        fresh = self._fresh()
        if fresh and self.gather_s > 0 and len(fresh) < limit:
            deadline = time.monotonic() + self.gather_s
            while len(fresh) < limit and (left := deadline - time.monotonic()) > 0:
                self._wake.wait(left)
                self._wake.clear()
                fresh = self._fresh()
        fresh.sort(key=lambda sf: sf[1].t_capture)
        picked = []
        for src, _ in fresh[:limit]:
            frame = src.take_newer(self._last_index[src.name])
            if frame is not None:
                self._last_index[src.name] = frame.index
                picked.append((src, frame))
        return picked

    def _next_frame(self) -> tuple[FrameSource, Frame] | None:
        """Of the sources with a frame not yet seen, the one whose newest frame is oldest (fairness)."""
        best: tuple[FrameSource, Frame] | None = None
        for s in self.sources:
            f = s.peek()
            fresh = f is not None and f.index > self._last_index[s.name]
            if fresh and (best is None or f.t_capture < best[1].t_capture):  # type: ignore[union-attr]
                best = (s, f)  # type: ignore[assignment]
        if best is None:
            return None
        src = best[0]
        frame = src.take_newer(self._last_index[src.name])
        if frame is None:
            return None
        self._last_index[src.name] = frame.index
        return src, frame

    def _infer(self) -> None:
        while not self._stop.is_set():
            model = self._model  # read once: a swap applies from the next batch on
            if model is None:
                self._stop.wait(0.05)
                continue
            self._wake.clear()
            limit = self.batch_limit(model)
            if limit == 1:
                one = self._next_frame()
                picked = [one] if one is not None else []
            else:
                picked = self._next_frames(limit)
            if not picked:
                self._wake.wait(0.25)
                continue
            self._serve(model, picked)

    def _to_cpu(self, model: LoadedModel, exc: BaseException) -> None:
        """The GPU keeps failing under this model: load it on the CPU and serve on (see runtimes/fallback.py)."""
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        try:
            cpu = on_cpu(model.runtime)
        except Exception as load_exc:  # noqa: BLE001 - stays as it is; the errors go on being counted
            log.error("cannot move %s to the CPU after GPU faults (%s): %s", model.ref, reason, load_exc)
            model.gpu_faults = 0
            return
        old, model.runtime = model.runtime, cpu
        model.fallback, model.gpu_faults = f"serving on the CPU after GPU faults: {reason}", 0
        limit = self.batch_limit(model)
        if limit > 1:
            model.warm(limit)
        log.warning("%s moved to the CPU after %d GPU faults in a row: %s", model.ref, GPU_FAULTS_BEFORE_CPU, reason)
        try:
            old.close()
        except Exception:  # noqa: BLE001 - a broken GPU may fail to release too
            log.debug("closing the GPU runtime of %s failed", model.ref, exc_info=True)

    def _serve(self, model: LoadedModel, picked: list[tuple[FrameSource, Frame]]) -> None:
        t0 = time.monotonic()
        try:
            if len(picked) == 1:
                results = [model.infer(picked[0][1].image)]
            else:
                results = model.infer_batch([f.image for _, f in picked], self.batch_limit(model), self._pool)
        except Exception as exc:  # a bad frame or model must not kill the loop
            model.health.errors += len(picked)
            self.stats.errors += len(picked)
            if model.health.last_error != str(exc):
                log.warning("inference failed on %s: %s", model.ref, exc)
            model.health.last_error = str(exc)
            if model.runtime.on_gpu and is_gpu_fault(exc):
                model.gpu_faults += 1
                if model.gpu_faults >= GPU_FAULTS_BEFORE_CPU:
                    self._to_cpu(model, exc)
            return
        model.gpu_faults = 0
        t1 = time.monotonic()
        self.batch_sizes[len(picked)] += 1
        lat = (t1 - t0) * 1000.0
        for (source, frame), result in zip(picked, results, strict=True):
            model.health.frames += 1
            if result.has_nan():
                model.health.nan_outputs += 1
            stale = (t1 - frame.t_capture) * 1000.0
            self.stats.add(lat, stale)
            self.source_stats[source.name].add(lat, stale)
            fr = FrameResult(
                source.name, frame.index, model.manifest.model, model.manifest.version, result, lat, stale, frame.image
            )
            self.last_result = fr
            shadow = self.shadow
            if shadow is not None and shadow.wants_frame():
                try:
                    self._shadow_q.put_nowait((fr, shadow))
                except queue.Full:
                    shadow.skipped += 1
            if self.sinks:
                try:
                    self._q.put_nowait(fr)
                except queue.Full:
                    self.sink_dropped += 1

    # -- helper threads ----------------------------------------------------------------------
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

    def _shadow(self) -> None:
        while not self._stop.is_set():
            try:
                fr, run = self._shadow_q.get(timeout=0.25)
            except queue.Empty:
                continue
            try:
                other = run.model.infer(fr.image)
                score = agreement(fr.result, other)
            except Exception as exc:
                run.errors += 1
                log.debug("shadow inference failed: %s", exc)
                continue
            run.frames += 1
            run.agree_sum += score
            if score < 1.0:
                for hook in self.disagreement_hooks:
                    hook(fr, other, score)

    def per_source(self) -> list[dict[str, Any]]:
        out = []
        for s in self.sources:
            snap = self.source_stats[s.name].snapshot()
            out.append(
                {
                    "name": s.name,
                    "ok": s.connected,
                    "error": None if s.connected else s.last_error,
                    "decode_fps": round(s.decode_fps(), 2),
                    "infer_fps": snap["fps"],
                    "dropped": s.dropped,
                    "staleness_ms_p50": snap["staleness_ms_p50"],
                    "staleness_ms_p99": snap["staleness_ms_p99"],
                    "reconnects": s.reconnects,
                    "decoder": s.decoder,
                    "decoder_note": s.decoder_note,
                    "queue_depth": s.pending(),
                }
            )
        return out
