"""Rollout, per-device rollout state, aggregated telemetry and the audit log (SQLModel tables)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_server.models import utcnow

RUNNING, PAUSED, COMPLETED, ABORTED, SUPERSEDED = "running", "paused", "completed", "aborted", "superseded"
ACTIVE_STATES = (RUNNING, PAUSED)


class Rollout(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=64)
    version: int
    version_id: int = Field(foreign_key="modelversion.id")
    slot: str = Field(default="default", max_length=32)
    selector: str
    waves_json: str  # cumulative device counts per wave, canary first, e.g. [2, 5, 10]
    bake_s: float = 600.0
    max_failure: float = 0.05
    gates_json: str = "[]"
    offline_timeout_s: float = 600.0
    state: str = Field(default=RUNNING, max_length=16, index=True)
    wave: int = 0
    wave_started_at: datetime | None = None
    wave_settled_at: datetime | None = None
    promote: bool = False
    reason: str | None = None
    created_by: str = Field(default="admin", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    rev: int = 0  # compare-and-set token: a replica advances the rollout only if rev is unchanged
    lease_owner: str | None = Field(default=None, max_length=64)  # the replica running a step, if any
    lease_until: datetime | None = None  # a replica that dies mid-step loses the lease at this time


# per-device states inside a rollout
PENDING, DEPLOYING, ACTIVE, FAILED, NOT_UPDATED, GATE_FAILED, ROLLED_BACK = (
    "pending",
    "deploying",
    "active",
    "failed",
    "not_updated",
    "gate_failed",
    "rolled_back",
)


class RolloutDevice(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("rollout_id", "device_id", name="uq_rollout_device"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", index=True)
    device_id: str = Field(foreign_key="device.id", max_length=64, index=True)
    wave: int
    prev_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    prev_version: int | None = None
    state: str = Field(default=PENDING, max_length=16)
    reason: str | None = None
    baseline_json: str | None = None
    result_json: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class TelemetryAgg(SQLModel, table=True):
    """Rolling (exponentially weighted) telemetry per device and model version; raw messages are not kept."""

    device_id: str = Field(primary_key=True, max_length=64)
    model: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    n: int = 0
    fps: float = 0.0
    p95: float = 0.0
    error_rate: float = 0.0
    confidence: float = 0.0
    detections: float = 0.0  # mean number of predictions per reported frame (detection rate)
    agreement: float | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class AuditLog(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=64)
    action: str = Field(max_length=64)
    target: str = Field(max_length=128)
    detail: str | None = None
