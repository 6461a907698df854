"""Mining settings (agent.yaml `mining:`): which strategies, their limits, dedup and the spool quota."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_minute: int | None = Field(None, ge=0)
    per_hour: int | None = Field(None, ge=0)
    per_day: int | None = Field(None, ge=0)


class StrategyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = Field(default_factory=dict, description="Miner parameters (e.g. low/high).")
    limits: Limits = Field(default_factory=lambda: Limits(per_minute=6, per_hour=60, per_day=500))


class MiningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="Mine hard samples and upload them to the server.")
    strategies: dict[str, StrategyConfig] = Field(
        default_factory=lambda: {"confidence": StrategyConfig(), "random": StrategyConfig(params={"share": 0.005})},
        description="Strategies by name: confidence, margin, flicker, rare, random, disagreement.",
    )
    per_source_per_hour: int = Field(120, ge=0, description="Diversity budget: samples per camera per hour.")
    min_interval_s: float = Field(
        0.5, ge=0, description="After a frame of a camera is considered (sent or a repeat), skip that camera this long."
    )
    dedup_distance: int = Field(6, ge=0, le=64, description="Hamming distance under which a frame is a repeat.")
    dedup_window: int = Field(4096, ge=1, description="Recent uploads the near-duplicate filter remembers.")
    spool_quota_mb: float = Field(200.0, gt=0, description="Disk the spool may use; oldest evicted past it.")
    jpeg_quality: int = Field(90, ge=30, le=100)
