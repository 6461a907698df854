"""Rollout, per-device rollout state and aggregated telemetry (SQLModel tables)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_server.db import EnumText, utcnow
from fleet_server.rollouts.states import DeviceRolloutState, RolloutState


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
    state: RolloutState = Field(default=RolloutState.RUNNING, sa_type=EnumText(RolloutState, 16), index=True)
    wave: int = 0
    wave_started_at: datetime | None = None
    wave_settled_at: datetime | None = None
    promote: bool = False
    shadow: bool = False  # canary runs the new version in shadow beside the old one first
    shadow_share: float = 0.2
    reason: str | None = None
    created_by: str = Field(default="admin", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    rev: int = 0  # compare-and-set token: a replica advances the rollout only if rev is unchanged
    lease_owner: str | None = Field(default=None, max_length=64)  # the replica running a step, if any
    lease_until: datetime | None = None  # a replica that dies mid-step loses the lease at this time


class RolloutDevice(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("rollout_id", "device_id", name="uq_rollout_device"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", index=True)
    device_id: str = Field(foreign_key="device.id", max_length=64, index=True)
    wave: int
    prev_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    prev_version: int | None = None
    state: DeviceRolloutState = Field(default=DeviceRolloutState.PENDING, sa_type=EnumText(DeviceRolloutState, 16))
    reason: str | None = None
    baseline_json: str | None = None
    result_json: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class TelemetryAgg(SQLModel, table=True):
    """Telemetry per device and model version, as sums: raw messages are not kept.

    Sums add up exactly across server replicas (each adds what it received, in one upsert per batch);
    means are sum / count. A rollout resets the row of the version it installs, so the new version is
    judged on its own window.
    """

    device_id: str = Field(primary_key=True, max_length=64)
    model: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    n: int = 0
    fps_sum: float = 0.0
    p95_sum: float = 0.0
    err_sum: float = 0.0
    conf_sum: float = 0.0
    conf_n: int = 0
    det_sum: float = 0.0  # predictions per reported frame, summed (detection rate)
    agree_sum: float = 0.0
    agree_n: int = 0
    updated_at: datetime = Field(default_factory=utcnow)

    def means(self) -> dict[str, float | int | None]:
        n = max(1, self.n)
        return {
            "n": self.n,
            "fps": self.fps_sum / n,
            "p95": self.p95_sum / n,
            "error_rate": self.err_sum / n,
            "confidence": self.conf_sum / self.conf_n if self.conf_n else None,
            "detections": self.det_sum / n,
            "agreement": self.agree_sum / self.agree_n if self.agree_n else None,
            "agree_sum": self.agree_sum,
            "agree_n": self.agree_n,
        }


SUM_COLUMNS = ("n", "fps_sum", "p95_sum", "err_sum", "conf_sum", "conf_n", "det_sum", "agree_sum", "agree_n")
