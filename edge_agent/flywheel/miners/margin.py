"""Margin / entropy (classifiers): the two best classes are close, or the distribution is flat."""

from __future__ import annotations

import math

import numpy as np

from edge_agent.camera.loop import FrameResult
from edge_agent.decoders.results import Classification
from edge_agent.flywheel.miners.base import Miner


class Margin(Miner):
    name = "margin"

    def __init__(self, max_margin: float = 0.15, min_entropy: float | None = None) -> None:
        self.max_margin, self.min_entropy = max_margin, min_entropy

    def check(self, fr: FrameResult) -> str | None:
        r = fr.result
        if not isinstance(r, Classification) or len(r.scores) < 2:
            return None
        p = np.sort(r.scores)[::-1]
        margin = float(p[0] - p[1])
        if margin <= self.max_margin:
            return f"margin {margin:.2f} <= {self.max_margin}"
        if self.min_entropy is not None:
            q = np.clip(r.scores, 1e-9, 1.0)
            ent = float(-(q * np.log(q)).sum() / math.log(len(q)))  # normalised to 0-1
            if ent >= self.min_entropy:
                return f"entropy {ent:.2f} >= {self.min_entropy}"
        return None
