"""Models, their versions and each version's artifacts (SQLModel tables and the public shape)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_server.db import utcnow


# -- models, versions, artifacts -----------------------------------------------------------------
class Model(SQLModel, table=True):
    name: str = Field(primary_key=True, max_length=64)
    task: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("model", "version", name="uq_model_version"),)
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(foreign_key="model.name", max_length=64, index=True)
    version: int
    task: str = Field(max_length=16)
    decoder: str = Field(max_length=16)
    classes_json: str
    input_shape: str = Field(max_length=64)
    signed_manifest: str  # SignedManifest JSON as published
    created_at: datetime = Field(default_factory=utcnow)
    report_json: str | None = None  # compile report: the target table and the recommendation per device class
    lineage_json: str | None = None  # dataset, fine-tuned-from, job
    checkpoint: str | None = Field(default=None, max_length=255)  # training checkpoint, relative to data_dir


class Artifact(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("version_id", "target", name="uq_artifact_target"),)
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="modelversion.id", index=True)
    target: str = Field(max_length=16)
    sha256: str = Field(max_length=64, index=True)
    length: int


class TargetMeasurement(SQLModel, table=True):
    """One device's timing of one target of a version it installed: the fleet's own benchmark."""

    __table_args__ = (UniqueConstraint("version_id", "device_id", "target", name="uq_measurement"),)
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="modelversion.id", index=True)
    model: str = Field(max_length=64)
    version: int
    target: str = Field(max_length=16)
    device_id: str = Field(max_length=64, index=True)
    hardware_key: str = Field(max_length=200, index=True)
    p50_ms: float | None = None
    p99_ms: float | None = None
    runs: int = 0
    error: str | None = Field(default=None, max_length=300)
    chosen: bool = False  # the device serves this target (its measurement chose it)
    measured_at: datetime = Field(default_factory=utcnow)


class ModelVersionPublic(SQLModel):
    name: str
    version: int
    task: str
    decoder: str
    classes: list[str]
    input_shape: list[int]
    created_at: datetime
    artifacts: list[dict]
    report: dict | None = None
    lineage: dict | None = None
    fleet_measurements: list[dict] = []  # per (hardware, target): devices, p50, p99, chosen by how many
