"""Hard samples uploaded by devices, with the device's predictions as pre-annotations."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from fleet_server.db import EnumText, utcnow
from fleet_server.flywheel.states import (  # noqa: F401 (re-exported)
    LABELLED,
    REVIEW_TRANSITIONS,
    SAMPLE_STATES,
    ReviewAction,
    SampleState,
)


class Sample(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64, index=True)
    sha256: str = Field(max_length=64, unique=True)  # of the uploaded bytes: the idempotency key
    phash: str = Field(max_length=16, index=True)  # computed here, never taken from the device
    model: str | None = Field(default=None, max_length=64, index=True)
    version: int | None = None
    strategy: str = Field(max_length=32, index=True)
    reason: str = Field(default="", max_length=200)
    source: str = Field(default="", max_length=64)
    captured_at: datetime | None = None
    received_at: datetime = Field(default_factory=utcnow, index=True)
    width: int
    height: int
    image: str = Field(max_length=64)  # generated file name under DATA/samples
    bytes: int
    predictions_json: str = "[]"
    state: SampleState = Field(default=SampleState.NEW, sa_type=EnumText(SampleState, 16), index=True)
    labels_json: str | None = None
    dataset: str | None = Field(default=None, max_length=80)  # the dataset version it was added to


class RetrainPolicy(SQLModel, table=True):
    """When `min_new_labels` reviewed samples of `model` wait, fine-tune it on `dataset` + them, gate, offer."""

    model: str = Field(primary_key=True, max_length=64)
    dataset: str = Field(max_length=64)
    min_new_labels: int = 50
    epochs: int = 4
    budget_points: float = 1.0
    rollout: str = Field(default="approve", max_length=16)  # auto | approve | none
    selector: str = Field(default="all", max_length=500)
    canary: str = Field(default="1", max_length=16)
    waves: str = Field(default="100%", max_length=100)
    bake_s: float = 600.0
    drift_drop: float | None = None  # also fire on this relative drop in mean confidence (with >= 1 new label)
    drift_window_min: float = 60.0
    enabled: bool = True
    created_by: str = Field(default="admin", max_length=64)
    updated_at: datetime = Field(default_factory=utcnow)
