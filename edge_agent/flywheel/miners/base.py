"""The miner interface."""

from __future__ import annotations

from abc import ABC, abstractmethod

from edge_agent.camera.loop import FrameResult


class Miner(ABC):
    name = ""

    @abstractmethod
    def check(self, fr: FrameResult) -> str | None:
        """Why this frame is worth labelling, or None. Called on the sink thread, once per result."""
