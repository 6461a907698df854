"""Confidence band: a detection (or the top class) scored inside [low, high] — the model is unsure."""

from __future__ import annotations

from edge_agent.camera.loop import FrameResult
from edge_agent.decoders.results import Classification
from edge_agent.flywheel.miners.base import Miner


class ConfidenceBand(Miner):
    name = "confidence"

    def __init__(self, low: float = 0.3, high: float = 0.6) -> None:
        if not 0 <= low < high <= 1:
            raise ValueError(f"confidence band needs 0 <= low < high <= 1, got {low}, {high}")
        self.low, self.high = low, high

    def check(self, fr: FrameResult) -> str | None:
        r = fr.result
        scores = [float(r.scores.max())] if isinstance(r, Classification) else [float(s) for s in r.scores]
        inside = [s for s in scores if self.low <= s <= self.high]
        if not inside:
            return None
        return f"score {min(inside):.2f} in [{self.low}, {self.high}]"
