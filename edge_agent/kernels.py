"""Hot per-pixel kernels, compiled with numba when it is installed.

`normalize_chw`: uint8 HWC (BGR) -> float CHW with per-channel (x/255 - mean)/std and optional channel
swap, in one pass through a 256-entry lookup table per channel. Measured on the 2-core CI machine:
0.09 ms for 224x224 against 0.8 ms for the numpy broadcast version (tools/bench_pipeline.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

try:  # numba is optional: the agent still runs (slower) without it
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None  # type: ignore[assignment]
    HAVE_NUMBA = False


def _normalize_chw_py(src: np.ndarray, lut: np.ndarray, dst: np.ndarray, swap: bool) -> None:
    h, w, _ = src.shape
    for y in range(h):
        for x in range(w):
            for c in range(3):
                sc = 2 - c if swap else c
                dst[c, y, x] = lut[c, src[y, x, sc]]


def _greedy_nms_py(xyxy: np.ndarray, order: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Greedy NMS over boxes visited in `order` (best first); returns kept indices."""
    n = order.shape[0]
    suppressed = np.zeros(n, np.bool_)
    keep = np.empty(min(n, max_keep), np.int64)
    k = 0
    for a in range(n):
        if suppressed[a]:
            continue
        i = order[a]
        keep[k] = i
        k += 1
        if k == max_keep:
            break
        ax1, ay1, ax2, ay2 = xyxy[i, 0], xyxy[i, 1], xyxy[i, 2], xyxy[i, 3]
        area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
        for b in range(a + 1, n):
            if suppressed[b]:
                continue
            j = order[b]
            w = min(ax2, xyxy[j, 2]) - max(ax1, xyxy[j, 0])
            h = min(ay2, xyxy[j, 3]) - max(ay1, xyxy[j, 1])
            if w <= 0.0 or h <= 0.0:
                continue
            inter = w * h
            area_b = max(0.0, xyxy[j, 2] - xyxy[j, 0]) * max(0.0, xyxy[j, 3] - xyxy[j, 1])
            if inter / max(area_a + area_b - inter, 1e-9) > iou_threshold:
                suppressed[b] = True
    return keep[:k]


def _jit(fn: Callable, name: str) -> Callable | None:
    if not HAVE_NUMBA:
        return None
    cache = bool(os.environ.get("NUMBA_CACHE_DIR")) or os.access(os.path.dirname(__file__), os.W_OK)
    try:
        return numba.njit(cache=cache, nogil=True, fastmath=True, boundscheck=False)(fn)
    except Exception as exc:  # a broken numba install must not take the agent down
        log.warning("numba kernel %s unavailable (%s); using numpy", name, exc)
        return None


_KERNEL = _jit(_normalize_chw_py, "normalize_chw")
_NMS = _jit(_greedy_nms_py, "nms")


def greedy_nms(xyxy: np.ndarray, order: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray | None:
    """Compiled greedy NMS, or None when numba is missing (the caller then uses its numpy version)."""
    if _NMS is None:
        return None
    return _NMS(
        np.ascontiguousarray(xyxy, dtype=np.float32), order.astype(np.int64), float(iou_threshold), int(max_keep)
    )


def numba_available() -> bool:
    return _KERNEL is not None


def normalize_chw(src: np.ndarray, lut: np.ndarray, dst: np.ndarray, swap: bool) -> None:
    """src (H, W, 3) uint8; lut (3, 256) float; dst (3, H, W). Releases the GIL while it runs."""
    if _KERNEL is None:
        raise RuntimeError("numba is not installed: pip install numba (or edgeloop[agent])")
    _KERNEL(src, lut, dst, swap)
