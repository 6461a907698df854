"""Ultralytics YOLOv8-style detection output: (1, 4 + C, N) with rows cx, cy, w, h, class scores.

Boxes are in model-input pixels; they are mapped back to frame pixels through the preprocessing
transform. NMS is per class (boxes of different classes never suppress each other).
"""

from __future__ import annotations

import numpy as np

from edge_agent import kernels
from edge_agent.decoders.results import Detections
from edge_agent.preprocess import Transform


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Greedy NMS; returns kept indices, best first (compiled with numba when installed)."""
    order = np.argsort(-scores, kind="stable")
    fast = kernels.greedy_nms(xyxy, order, iou_threshold, max_keep)
    if fast is not None:
        return fast
    x1, y1, x2, y2 = xyxy[:, 0], xyxy[:, 1], xyxy[:, 2], xyxy[:, 3]
    areas = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_yolov8(
    outputs: list[np.ndarray],
    num_classes: int,
    transform: Transform,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Detections:
    out = np.asarray(outputs[0])
    if out.ndim != 3 or out.shape[0] != 1 or out.shape[1] != 4 + num_classes:
        raise ValueError(f"yolov8 output must have shape (1, {4 + num_classes}, N), got {out.shape}")
    rows = out[0]  # (4 + C, N): reductions run along contiguous rows, no transpose of the whole tensor
    cls = rows[4:]
    scores = cls.max(axis=0)
    keep = np.flatnonzero(scores >= conf_threshold)
    if keep.size == 0:
        return Detections.empty()
    if keep.size > 3 * max_detections + 300:  # NMS cost grows with candidates: keep the best ones
        keep = keep[np.argpartition(-scores[keep], 3 * max_detections + 300)[: 3 * max_detections + 300]]
    class_ids = cls[:, keep].argmax(axis=0)
    scores = scores[keep].astype(np.float32)
    cx, cy, w, h = (rows[k, keep].astype(np.float32) for k in range(4))
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    # Per-class NMS in one pass: shift each class into its own region of the plane.
    offset = class_ids[:, None].astype(np.float32) * (float(np.abs(xyxy).max()) + 1.0)
    keep = nms(xyxy + offset, scores, iou_threshold, max_detections)
    return Detections(
        transform.to_frame(xyxy[keep]).astype(np.float32),
        scores[keep].astype(np.float32),
        class_ids[keep].astype(np.int64),
    )
