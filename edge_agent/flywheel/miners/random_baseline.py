"""Random baseline: a fixed share of frames, whatever the model said (the honest comparison)."""

from __future__ import annotations

import random

from edge_agent.camera.loop import FrameResult
from edge_agent.flywheel.miners.base import Miner


class RandomBaseline(Miner):
    name = "random"

    def __init__(self, share: float = 0.01, seed: int | None = None) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"random share must be in (0, 1], got {share}")
        self.share = share
        self._rng = random.Random(seed)

    def check(self, fr: FrameResult) -> str | None:
        return f"random {self.share:.1%}" if self._rng.random() < self.share else None
