"""Rare class: the model predicts a class it has seldom predicted on this device."""

from __future__ import annotations

from collections import Counter

from edge_agent.camera.loop import FrameResult
from edge_agent.decoders.results import Classification
from edge_agent.flywheel.miners.base import Miner


class RareClass(Miner):
    name = "rare"

    def __init__(self, max_share: float = 0.05, min_seen: int = 200, min_score: float = 0.25) -> None:
        self.max_share, self.min_seen, self.min_score = max_share, min_seen, min_score
        self.counts: Counter[int] = Counter()
        self.total = 0

    def check(self, fr: FrameResult) -> str | None:
        r = fr.result
        if isinstance(r, Classification):
            classes = [r.top1]
        else:
            classes = sorted({int(c) for c, s in zip(r.class_ids, r.scores, strict=True) if s >= self.min_score})
        rare = None
        if self.total >= self.min_seen:
            for c in classes:
                share = self.counts[c] / self.total
                if share <= self.max_share:
                    rare = f"class {c} is {share:.1%} of predictions here"
                    break
        self.counts.update(classes)
        self.total += 1
        return rare
