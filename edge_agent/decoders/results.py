"""Result types: dataclasses of numpy arrays, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    xyxy: np.ndarray  # (N, 4) float32, frame pixels
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must have shape ({n}, 4), got {self.xyxy.shape}")
        if self.scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {self.scores.shape}")
        if self.class_ids.shape != (n,):
            raise ValueError(f"class_ids must have shape ({n},), got {self.class_ids.shape}")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def has_nan(self) -> bool:
        return bool(np.isnan(self.xyxy).any() or np.isnan(self.scores).any())


@dataclass(frozen=True)
class Classification:
    scores: np.ndarray  # (C,) float32 probabilities

    def __post_init__(self) -> None:
        if self.scores.ndim != 1 or self.scores.size == 0:
            raise ValueError(f"scores must have shape (C,) with C > 0, got {self.scores.shape}")

    @property
    def top1(self) -> int:
        return int(np.argmax(self.scores))

    def topk(self, k: int) -> list[tuple[int, float]]:
        idx = np.argsort(-self.scores)[:k]
        return [(int(i), float(self.scores[i])) for i in idx]

    def has_nan(self) -> bool:
        return bool(np.isnan(self.scores).any())
