"""The job table: one row per training / compile / synthesis job, claimed by one replica at a time."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from fleet_server.db import EnumText, utcnow
from fleet_server.jobs.states import JobState

JOB_KINDS = ("train", "compile", "synthesize", "retrain")


class Job(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    state: JobState = Field(default=JobState.QUEUED, sa_type=EnumText(JobState, 16), index=True)
    params_json: str
    progress: float = 0.0
    message: str = Field(default="", max_length=500)
    result_json: str | None = None
    error: str | None = None
    created_by: str = Field(default="admin", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = None
    attempts: int = 0
    cancel_requested: bool = False
