"""Frame -> model input, into a buffer allocated once per model.

Resize (stretch or letterbox), colour order, scale to 0-1, mean/std, layout, dtype. The returned
`Transform` maps model-space boxes back to frame pixels.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent import kernels
from edge_agent.protocol.manifest import InputSpec

log = logging.getLogger(__name__)

LETTERBOX_FILL = 114


@dataclass(frozen=True)
class Transform:
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    frame_w: int
    frame_h: int

    def to_frame(self, xyxy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xyxy)
        out[:, [0, 2]] = (xyxy[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (xyxy[:, [1, 3]] - self.pad_y) / self.scale_y
        np.clip(out[:, [0, 2]], 0, self.frame_w, out=out[:, [0, 2]])
        np.clip(out[:, [1, 3]], 0, self.frame_h, out=out[:, [1, 3]])
        return out


class Preprocessor:
    """`kernel`: "numba" (fused lookup-table pass), "numpy", or "auto" (measure both here, keep the faster)."""

    def __init__(self, spec: InputSpec, kernel: str = "auto") -> None:
        self.spec = spec
        self.h, self.w = spec.hw
        self._scratch = threading.local()  # one canvas per thread: a batch's frames may be filled in parallel
        # (x/255 - mean)/std == x * a + b, per channel
        std = np.asarray(spec.std, dtype=np.float32)
        self._a = (1.0 / (255.0 * std)).astype(np.float32)
        self._b = (-np.asarray(spec.mean, dtype=np.float32) / std).astype(np.float32)
        out_dtype = np.dtype(spec.dtype)
        # channel c of the model input, for every uint8 value (mean/std are given in the model's channel order)
        self._lut = (np.arange(256, dtype=np.float32)[None, :] * self._a[:, None] + self._b[:, None]).astype(out_dtype)
        self.buffer = np.empty((1, *spec.shape[1:]), dtype=out_dtype)
        self._batch = np.empty((0, *spec.shape[1:]), dtype=out_dtype)
        self.kernel = self._choose(kernel)

    def _choose(self, kernel: str) -> str:
        if kernel not in ("auto", "numba", "numpy"):
            raise ValueError(f"kernel must be auto, numba or numpy, got {kernel!r}")
        fused_ok = kernels.numba_available() and self.spec.layout == "NCHW" and self.spec.dtype != "uint8"
        if kernel == "numba" and not fused_ok:
            raise ValueError("the numba kernel needs numba installed and a float NCHW input")
        if kernel != "auto":
            return kernel
        if not fused_ok:
            return "numpy"
        frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        times = {}
        for k in ("numba", "numpy"):
            self.kernel = k
            self(frame)  # compile / warm
            t0 = time.perf_counter()
            for _ in range(5):
                self(frame)
            times[k] = time.perf_counter() - t0
        best = min(times, key=lambda k: times[k])
        log.debug(
            "preprocess kernel %s (numba %.3f ms, numpy %.3f ms)", best, times["numba"] * 200, times["numpy"] * 200
        )
        return best

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, Transform]:
        """One frame into the model's batch-1 input buffer (reused on every call)."""
        return self.buffer, self.fill(frame, self.buffer[0])

    def batch(self, n: int) -> np.ndarray:
        """A buffer for `n` images, allocated once for the largest n asked for and reused (a view of it)."""
        if self._batch.shape[0] < n:
            self._batch = np.empty((n, *self.spec.shape[1:]), dtype=self.buffer.dtype)
        return self._batch[:n]

    @property
    def _canvas(self) -> np.ndarray:
        canvas: np.ndarray | None = getattr(self._scratch, "canvas", None)
        if canvas is None:
            canvas = self._scratch.canvas = np.full((self.h, self.w, 3), LETTERBOX_FILL, dtype=np.uint8)
        return canvas

    @property
    def _hwc(self) -> np.ndarray:
        hwc: np.ndarray | None = getattr(self._scratch, "hwc", None)
        if hwc is None:
            hwc = self._scratch.hwc = np.empty((self.h, self.w, 3), dtype=np.float32)
        return hwc

    def fill(self, frame: np.ndarray, dst: np.ndarray) -> Transform:
        """One frame into `dst`, one image's slot of a batch (C,H,W or H,W,C); returns its transform.
        Safe to call from several threads at once for different slots."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got shape {frame.shape} dtype {frame.dtype}")
        fh, fw = frame.shape[:2]
        canvas = self._canvas
        if self.spec.resize == "stretch":
            cv2.resize(frame, (self.w, self.h), dst=canvas, interpolation=cv2.INTER_LINEAR)
            tf = Transform(self.w / fw, self.h / fh, 0.0, 0.0, fw, fh)
        else:
            r = min(self.w / fw, self.h / fh)
            nw, nh = max(1, round(fw * r)), max(1, round(fh * r))
            px, py = (self.w - nw) // 2, (self.h - nh) // 2
            canvas[...] = LETTERBOX_FILL
            cv2.resize(frame, (nw, nh), dst=canvas[py : py + nh, px : px + nw], interpolation=cv2.INTER_LINEAR)
            tf = Transform(r, r, float(px), float(py), fw, fh)
        if self.kernel == "numba":
            kernels.normalize_chw(canvas, self._lut, dst, self.spec.color == "RGB")
            return tf
        src: np.ndarray = canvas
        if self.spec.color == "RGB":
            src = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        if self.spec.dtype == "uint8":
            target = dst if self.spec.layout == "NHWC" else dst.transpose(1, 2, 0)
            target[...] = src
            return tf
        hwc = self._hwc
        np.multiply(src, self._a, out=hwc)
        np.add(hwc, self._b, out=hwc)
        dst[...] = hwc.transpose(2, 0, 1) if self.spec.layout == "NCHW" else hwc
        return tf
