"""How much two models agree on one frame: top-1 match for classifiers, IoU-matched F1 for detectors."""

from __future__ import annotations

import numpy as np

from edge_agent.decoders.results import Classification, Detections


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def detection_f1(ref: Detections, other: Detections, iou_threshold: float = 0.5) -> float:
    """Greedy one-to-one matching of same-class boxes at IoU >= threshold; F1 of the match. Both empty: 1."""
    if len(ref) == 0 and len(other) == 0:
        return 1.0
    if len(ref) == 0 or len(other) == 0:
        return 0.0
    iou = box_iou(ref.xyxy, other.xyxy)
    iou[ref.class_ids[:, None] != other.class_ids[None, :]] = 0.0
    matched = 0
    while True:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[i, j] < iou_threshold:
            break
        matched += 1
        iou[i, :] = 0.0
        iou[:, j] = 0.0
    return 2.0 * matched / (len(ref) + len(other))


def agreement(ref: Classification | Detections, other: Classification | Detections) -> float:
    if isinstance(ref, Classification) and isinstance(other, Classification):
        return 1.0 if ref.top1 == other.top1 else 0.0
    if isinstance(ref, Detections) and isinstance(other, Detections):
        return detection_f1(ref, other)
    raise TypeError(f"cannot compare a {type(ref).__name__} with a {type(other).__name__}")
