"""Devices, their telemetry history and their desired-state history (SQLModel tables and public shapes)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import StringConstraints
from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from edge_agent.protocol.messages import SLOT_PATTERN, UpdateStateName
from fleet_server.db import EnumText, utcnow


# -- devices -------------------------------------------------------------------------------------
class DeviceBase(SQLModel):
    id: str = Field(primary_key=True, max_length=64)


class SlotState(SQLModel):
    """What a device reports of one model slot: Device holds its default slot's, DeviceSlot every slot's of
    an agent that serves several."""

    model: str | None = Field(default=None, max_length=64)
    version: int | None = None  # serving frames
    state: UpdateStateName | None = Field(default=None, sa_type=EnumText(UpdateStateName, 32))
    target_version: int | None = None  # being installed, or the last that failed
    reason: str | None = None
    shadow_version: int | None = None
    shadow_reason: str | None = None
    target: str | None = Field(default=None, max_length=16)  # the artifact target serving frames


class Device(DeviceBase, SlotState, table=True):
    token_hash: str = Field(max_length=64, index=True)
    mining_json: str | None = None  # hard-sample mining settings sent in the desired state
    tags_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow)
    online: bool = False
    last_seen: datetime | None = None
    desired_revision: int = 0
    reported_revision: int | None = None
    reported_boot: str | None = Field(default=None, max_length=32)  # the agent process of the last report applied
    reported_seq: int | None = None  # and its number there: an older one is not applied
    capabilities_json: str | None = None
    target_reason: str | None = Field(default=None, max_length=500)  # why that one (its own timing, or not)
    detail: str | None = Field(default=None, max_length=200)  # what its running update step is doing
    # latest telemetry
    fps: float | None = None
    latency_ms_p95: float | None = None
    staleness_ms_p99: float | None = None
    telemetry_json: str | None = None
    # what is wrong, from its telemetry (a camera down, fps under half its usual); None when nothing is
    problem: str | None = Field(default=None, max_length=300)
    fps_baseline: float | None = None  # its usual fps: a slow average of its healthy telemetry


CAMERA_PATTERN = r"^[A-Za-z0-9_.-]{1,32}$"


class DeviceSlot(SlotState, table=True):
    """What a device reports per model slot: each slot has its own model, cameras and update state. The
    default slot's report is also kept on Device itself (the fleet page and most rollouts read that)."""

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=64)
    slot: str = Field(primary_key=True, max_length=32)
    sources_json: str = "[]"  # the cameras it serves, by name
    fps: float | None = None
    latency_ms_p95: float | None = None
    staleness_ms_p99: float | None = None
    telemetry_json: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class TelemetryPoint(SQLModel, table=True):
    """A device's telemetry over time for the console's charts: at most one point per device per interval."""

    __table_args__ = (Index("ix_telemetrypoint_device_at", "device_id", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    at: datetime = Field(index=True)
    model: str | None = Field(default=None, max_length=64)
    version: int | None = None
    fps: float = 0.0
    latency_ms_p95: float = 0.0
    staleness_ms_p99: float = 0.0
    frames: int = 0
    dropped: int = 0
    errors: int = 0
    confidences: str = "[]"  # the last predictions' confidences, for the confidence histogram


class DevicePublic(DeviceBase):
    tags: dict[str, str] = {}
    online: bool
    last_seen: datetime | None
    model: str | None
    version: int | None
    state: UpdateStateName | None
    target_version: int | None
    reason: str | None
    fps: float | None
    latency_ms_p95: float | None
    staleness_ms_p99: float | None
    desired_revision: int
    reported_revision: int | None
    last_prediction: list[dict] = []
    source_ok: bool | None = None
    source_error: str | None = None
    sources: list[dict] = []
    shadow: dict | None = None
    shadow_version: int | None = None
    shadow_reason: str | None = None
    target: str | None = None
    target_reason: str | None = None
    detail: str | None = None
    flywheel: dict | None = None
    slots: list[dict] = []  # every slot the device reports: model, version, state, cameras, fps
    telemetry_shed: int = 0  # telemetry points the answering replica shed under overload (state is never shed)
    problem: str | None = None  # why the fleet page counts it "with a problem" (None: it is fine, or offline)


class DeviceEnrolled(SQLModel):
    device_id: str
    token: str
    root_public_key: str
    server_url: str
    mqtt_url: str
    mqtt_ca: str | None = None  # PEM of the CA the device pins for mqtts://, where the server's broker uses its own


# -- deployments ---------------------------------------------------------------------------------
class Deployment(SQLModel, table=True):
    """Desired state history: the newest row per (device, slot) is what the device should run."""

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=64)
    slot: str = Field(default="default", max_length=32)
    version_id: int = Field(foreign_key="modelversion.id")
    revision: int
    signed_manifest: str  # may differ from the version's (a signed rollback)
    health_window_s: float = 10.0
    min_fps_ratio: float = 0.5
    shadow_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    shadow_share: float | None = None
    measure_budget_s: float | None = None  # seconds per candidate target on the device; 0: none; None: its own
    sources_json: str | None = None  # the cameras the slot serves, by name (JSON list); None: as configured
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = Field(default="admin", max_length=64)


class DeployRequest(SQLModel):
    model: str = Field(max_length=64)
    version: int = Field(ge=1, le=2**31 - 1)
    slot: str = Field(default="default", regex=SLOT_PATTERN, description="The device's model slot.")
    sources: list[Annotated[str, StringConstraints(pattern=CAMERA_PATTERN)]] | None = Field(
        default=None,
        max_length=64,
        description="Cameras (by name) the slot serves from now on, taken from the slots agent.yaml gave them; "
        "unset: as configured.",
    )
    health_window_s: float | None = Field(default=None, ge=0, le=3600)
    min_fps_ratio: float = Field(default=0.5, ge=0, le=1)
    shadow_model: str | None = None
    shadow_version: int | None = None
    shadow_share: float = Field(default=0.1, gt=0, le=1)
    measure_budget_s: float | None = Field(
        default=None,
        ge=0,
        le=60,
        description="Seconds the device times each target it can run, to serve the fastest there; 0: do not "
        "time, serve the build host's choice; unset: the agent's setting (3 s).",
    )
