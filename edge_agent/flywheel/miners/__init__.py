"""Miners, one file each: which frames are worth a person's label. Each returns a reason or None."""

from __future__ import annotations

from typing import Any

from edge_agent.flywheel.miners.base import Miner
from edge_agent.flywheel.miners.confidence import ConfidenceBand
from edge_agent.flywheel.miners.flicker import Flicker
from edge_agent.flywheel.miners.margin import Margin
from edge_agent.flywheel.miners.random_baseline import RandomBaseline
from edge_agent.flywheel.miners.rare import RareClass

MINERS: dict[str, type[Miner]] = {m.name: m for m in (ConfidenceBand, Margin, Flicker, RareClass, RandomBaseline)}
# shadow disagreement is not a per-frame miner: the loop's shadow thread reports it (see sink.py)
STRATEGIES = (*MINERS, "disagreement")


def build_miner(name: str, params: dict[str, Any]) -> Miner:
    if name not in MINERS:
        raise ValueError(f"unknown miner {name!r}; choose from {', '.join(STRATEGIES)}")
    try:
        return MINERS[name](**params)
    except TypeError as exc:
        raise ValueError(f"miner {name}: {exc}") from None
