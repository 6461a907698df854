"""OpenCV frame sources: file, USB/V4L2 index or path, RTSP, HTTP MJPEG, GStreamer pipeline, Jetson CSI.

One capture thread per source keeps only the newest frame: a slow model never builds a backlog, it
skips frames (counted as `dropped`). A source that fails to open, closes, or stops sending while
connected (a stall) is reopened with exponential backoff and jitter. `stop()` returns within a second.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.camera.gpu_decode import (
    CudaCodecCapture,
    cudacodec_available,
    ffmpeg_hw_params,
    ffmpeg_hw_used,
    jetson_decode_pipeline,
)

log = logging.getLogger(__name__)


@dataclass
class Frame:
    image: np.ndarray
    index: int  # capture sequence number, increasing
    t_capture: float  # time.monotonic() when the frame was read


CSI_PARAMS = {"width": (64, 8192), "height": (64, 8192), "fps": (1, 240), "flip": (0, 7)}


def csi_pipeline(spec: str) -> str:
    """`csi://SENSOR?width=W&height=H&fps=F[&flip=M]` -> the GStreamer pipeline a Jetson's CSI camera needs:
    nvarguscamerasrc (ISP, NVMM buffers) -> nvvidconv (to system memory) -> BGR -> appsink keeping only the
    newest frame. Refuses unknown or out-of-range parameters with a message naming them."""
    rest = spec[len("csi://") :]
    sensor, _, query = rest.partition("?")
    if not sensor.isdigit():
        raise ValueError(f"{spec}: the sensor id after csi:// must be a number, e.g. csi://0")
    values = {"width": 1280, "height": 720, "fps": 30, "flip": 0}
    for part in filter(None, query.split("&")):
        key, _, raw = part.partition("=")
        if key not in CSI_PARAMS:
            raise ValueError(f"{spec}: unknown parameter {key!r}; use {', '.join(CSI_PARAMS)}")
        lo, hi = CSI_PARAMS[key]
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise ValueError(f"{spec}: {key} must be a whole number from {lo} to {hi}, got {raw!r}")
        values[key] = int(raw)
    w, h, fps, flip = values["width"], values["height"], values["fps"], values["flip"]
    return (
        f"nvarguscamerasrc sensor-id={int(sensor)} ! "
        f"video/x-raw(memory:NVMM), width={w}, height={h}, framerate={fps}/1, format=NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def describe_source(spec: str) -> str:
    """A source string safe to log: credentials in URLs are masked."""
    if "://" in spec and "@" in spec.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = spec.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return spec


class FrameSource:
    def __init__(
        self,
        spec: str,
        loop_file: bool = True,
        pace_file: bool = True,
        stall_timeout_s: float = 5.0,
        backoff_max_s: float = 30.0,
        name: str = "cam0",
        pace_fps: float | None = None,
        decode_threads: int = 1,
        decode: str = "cpu",
        gpu: bool = False,
        jetson: bool = False,
        codec: str = "h264",
    ) -> None:
        self.pace_fps = pace_fps
        # where frames are decoded (camera/gpu_decode.py): "cpu", "gpu" (try it, say why not), or "auto" (the
        # GPU where the box has one); `decoder` says which path runs, `decoder_note` why a GPU one does not
        self.decode, self.gpu, self.jetson, self.codec = decode, gpu, jetson, codec
        self.decoder = "cpu"
        self.decoder_note: str | None = None
        # one decoding thread by default: FFmpeg's frame threads cost more CPU per frame (1.22 vs 0.95 ms
        # for 640x480 MPEG-4 here) and take the core the model runs on
        self.decode_threads = decode_threads
        self.decoder_threads = 0  # read back from the decoder once open
        self.spec = spec
        self.name = name
        self._listeners: list[threading.Event] = []
        self._capture_times: deque[float] = deque(maxlen=512)
        self.is_file = not spec.isdigit() and "://" not in spec and "!" not in spec and not spec.startswith("/dev/")
        self.loop_file = loop_file
        self.pace_file = pace_file
        self.stall_timeout_s = stall_timeout_s
        self.backoff_max_s = backoff_max_s
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.ended = False
        self.captured = 0
        self.dropped = 0  # frames overwritten before anyone took them
        self.reconnects = 0
        self.last_error: str | None = None
        self._taken_index = -1

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FrameSource:
        self._thread = threading.Thread(target=self._run, name=f"capture:{describe_source(self.spec)}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- consumer side -----------------------------------------------------------------------
    def add_listener(self, event: threading.Event) -> None:
        """`event` is set whenever a new frame arrives (one inference thread can watch many sources)."""
        self._listeners.append(event)

    def peek(self) -> Frame | None:
        """The newest frame, without taking it."""
        return self._latest

    def take_newer(self, after: int) -> Frame | None:
        """The newest frame with index > `after`, without waiting; marks it taken."""
        with self._cond:
            f = self._latest
            if f is not None and f.index > after:
                self._taken_index = f.index
                self._cond.notify_all()
                return f
        return None

    def pending(self) -> int:
        """Frames waiting for the consumer: 0 or 1, by design (only the newest is kept)."""
        f = self._latest
        return 1 if f is not None and f.index > self._taken_index else 0

    def decode_fps(self, window_s: float = 5.0) -> float:
        now = time.monotonic()
        with self._cond:
            recent = [t for t in self._capture_times if now - t <= window_s]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def latest(self, after: int, timeout: float) -> Frame | None:
        """The newest frame with index > `after`, waiting up to `timeout` seconds for one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                f = self._latest
                if f is not None and f.index > after:
                    self._taken_index = f.index
                    self._cond.notify_all()
                    return f
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    # -- capture thread ----------------------------------------------------------------------
    def _open(self) -> Any:  # a cv2.VideoCapture, or an object with its calls (CudaCodecCapture)
        if self.spec.isdigit():
            cap = cv2.VideoCapture(int(self.spec))
        elif self.spec.startswith("csi://"):
            try:
                cap = cv2.VideoCapture(csi_pipeline(self.spec), cv2.CAP_GSTREAMER)
            except ValueError as exc:
                raise OSError(str(exc)) from None
        elif "!" in self.spec:
            cap = cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        else:
            if self.is_file and not Path(self.spec).exists():
                raise OSError(f"no such file: {self.spec}")
            # a blocked read returns after the stall timeout, so a silent stream is noticed in time
            wait_ms = max(100, int(self.stall_timeout_s * 1000))
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(wait_ms, 5000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, wait_ms]
            if self.decode_threads > 0:
                params += [cv2.CAP_PROP_N_THREADS, self.decode_threads]
            gpu_cap = self._open_gpu(params) if self.decode == "gpu" or (self.decode == "auto" and self.gpu) else None
            if gpu_cap is not None:
                return gpu_cap
            self.decoder = "cpu"
            cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)
            self.decoder_threads = int(cap.get(cv2.CAP_PROP_N_THREADS))  # what FFmpeg actually uses
        if not cap.isOpened():
            cap.release()
            raise OSError(f"cannot open source {describe_source(self.spec)}")
        return cap

    def _open_gpu(self, params: list[int]) -> Any:
        """The first GPU decode path that opens (see gpu_decode.py), or None: then the CPU path runs, and
        `decoder_note` says why (logged once per reason)."""
        notes = []
        if self.jetson:
            pipeline = jetson_decode_pipeline(self.spec, self.codec)
            if pipeline is None:
                notes.append("no nvv4l2decoder pipeline for this kind of source")
            else:
                cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
                if cap.isOpened():
                    return self._gpu_ok(cap, "nvv4l2decoder")
                cap.release()
                notes.append("the nvv4l2decoder pipeline did not open (GStreamer support in OpenCV?)")
        if cudacodec_available():
            try:
                return self._gpu_ok(CudaCodecCapture(self.spec), "cudacodec")
            except cv2.error as exc:
                notes.append(f"cudacodec: {str(exc).strip().splitlines()[-1][:120]}")
        hw = ffmpeg_hw_params()
        if hw:
            cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params + hw)
            used = ffmpeg_hw_used(cap) if cap.isOpened() else None
            if used is not None:
                self.decoder_threads = int(cap.get(cv2.CAP_PROP_N_THREADS))
                return self._gpu_ok(cap, f"ffmpeg-{used}")
            cap.release()
            notes.append("OpenCV's FFmpeg took no hardware decoder")
        note = "; ".join(notes) or "no GPU decode path in this OpenCV"
        if note != self.decoder_note:
            log.warning("source %s: decoding on the CPU: %s", describe_source(self.spec), note)
        self.decoder_note = note
        return None

    def _gpu_ok(self, cap: Any, decoder: str) -> Any:
        if decoder != self.decoder:
            log.info("source %s: decoding with %s", describe_source(self.spec), decoder)
        self.decoder, self.decoder_note = decoder, None
        return cap

    def _publish(self, image: np.ndarray) -> None:
        with self._cond:
            prev = self._latest
            if prev is not None and prev.index > self._taken_index:
                self.dropped += 1
            self.captured += 1
            now = time.monotonic()
            self._latest = Frame(image, self.captured, now)
            self._capture_times.append(now)
            self._cond.notify_all()
        for ev in self._listeners:
            ev.set()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                cap = self._open()
            except OSError as exc:
                self.connected = False
                if self.last_error != str(exc):
                    log.warning("source %s: %s; retrying with backoff", describe_source(self.spec), exc)
                self.last_error = str(exc)
                self._stop.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            self.connected, self.last_error = True, None
            backoff = 0.5
            try:
                self._read_until_broken(cap)
            finally:
                cap.release()
                self.connected = False
            if self.ended:
                return
            if not self._stop.is_set():
                self.reconnects += 1

    def _read_until_broken(self, cap: Any) -> None:
        fps = (self.pace_fps or cap.get(cv2.CAP_PROP_FPS)) if self.is_file else 0.0
        period = 1.0 / fps if (self.pace_file and fps and 1.0 <= fps <= 2000.0) else 0.0
        next_t = time.monotonic()
        last_frame_t = time.monotonic()
        while not self._stop.is_set():
            ok, image = cap.read()
            if not ok or image is None:
                if self.is_file and self.loop_file and self.captured > 0:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, image = cap.read()
                if not ok or image is None:
                    if self.is_file and not self.loop_file:
                        log.info("source %s: end of file", self.spec)
                        self.ended = True
                        return
                    if time.monotonic() - last_frame_t > self.stall_timeout_s:
                        self.last_error = f"stalled: no frame for {self.stall_timeout_s:.0f}s"
                        log.warning("source %s: %s; reconnecting", describe_source(self.spec), self.last_error)
                        return
                    if not self.is_file:
                        self.last_error = "stream closed"
                        log.warning("source %s: stream closed; reconnecting", describe_source(self.spec))
                        return
                    self._stop.wait(0.05)
                    continue
            last_frame_t = time.monotonic()
            self._publish(image)
            if self.is_file and not self.pace_file:
                # an unpaced file is read on demand: decode the next frame while this one is inferred,
                # never frames that would only be dropped
                with self._cond:
                    self._cond.wait_for(lambda: self._taken_index >= self.captured or self._stop.is_set())
                continue
            if period:
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_t = time.monotonic()
