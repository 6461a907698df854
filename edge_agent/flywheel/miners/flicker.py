"""Temporal flicker: an object of a class appears and disappears (or the reverse) across neighbouring
frames of one camera — the model sees it in one frame and not the next, though the scene barely moved."""

from __future__ import annotations

from collections import defaultdict, deque

from edge_agent.camera.loop import FrameResult
from edge_agent.decoders.results import Classification
from edge_agent.flywheel.miners.base import Miner


class Flicker(Miner):
    name = "flicker"

    def __init__(self, window: int = 3, min_score: float = 0.25) -> None:
        if window < 3:
            raise ValueError("flicker needs a window of at least 3 frames")
        self.window, self.min_score = window, min_score
        self._hist: dict[str, deque[frozenset[int]]] = defaultdict(lambda: deque(maxlen=window))

    def check(self, fr: FrameResult) -> str | None:
        r = fr.result
        if isinstance(r, Classification):
            seen = frozenset([r.top1])
        else:
            seen = frozenset(int(c) for c, s in zip(r.class_ids, r.scores, strict=True) if s >= self.min_score)
        h = self._hist[fr.source]
        h.append(seen)
        if len(h) < 3:
            return None
        a, b, c = h[-3], h[-2], h[-1]
        gone_back = (a & c) - b  # seen, missed, seen again
        blip = (b - a) - c  # absent, seen once, absent again
        if gone_back:
            return f"class {min(gone_back)} missed for one frame"
        if blip:
            return f"class {min(blip)} seen for one frame only"
        return None
