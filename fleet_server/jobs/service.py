"""Queueing jobs and reading them back: the checks that run before a job is queued, and its public shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from edge_agent.protocol.manifest import RefError, parse_ref, parse_ref_latest
from fleet_server.audit import audit
from fleet_server.jobs.runner import log_tail
from fleet_server.jobs.states import FINISHED, JobEvent, JobState, next_job_state
from fleet_server.jobs.tables import Job
from fleet_server.registry.tables import ModelVersion
from model_zoo.compile import TARGETS
from model_zoo.datasets.store import DatasetError, DatasetStore

# where a job's inputs are (paths relative to the data root; see model_zoo/objects.py): not shown to API clients
SERVER_PATHS = ("datasets_dir", "checkpoint", "init_from", "current_onnx", "storage_url")


def locations(settings: Any) -> dict[str, Any]:
    """The parameters every job gets: where datasets are, the bucket its worker reads and writes, and how long a
    compile times each target."""
    where = {"datasets_dir": "datasets", **({"storage_url": settings.storage_url} if settings.storage_url else {})}
    return {**where, "measure_s": settings.compile_measure_s}


def artifact_path(sha256: str) -> str:
    return f"artifacts/{sha256[:2]}/{sha256}"


class JobError(Exception):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def job_public(job: Job, jobs_dir: Path | None = None, tail: int = 0) -> dict[str, Any]:
    out = {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "progress": round(job.progress, 4),
        "message": job.message,
        "params": {k: v for k, v in json.loads(job.params_json).items() if k not in SERVER_PATHS},
        "result": json.loads(job.result_json) if job.result_json else None,
        "error": job.error,
        "created_by": job.created_by,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "attempts": job.attempts,
    }
    if tail and jobs_dir is not None:
        out["log"] = log_tail(jobs_dir / str(job.id), tail)
    return out


def dataset_of(datasets: DatasetStore, ref: str) -> tuple[str, int, str]:
    """NAME or NAME:VERSION of a stored dataset -> (name, version, task)."""
    try:
        name, version = parse_ref_latest(ref)
    except RefError:
        raise JobError(f"dataset must be NAME or NAME:VERSION, got {ref!r}") from None
    try:
        dv = datasets.load(name, version)
    except DatasetError as exc:
        raise JobError(str(exc), 404) from None
    return dv.name, dv.version, dv.task


def version_of(session: Session, ref: str) -> ModelVersion:
    try:
        name, version = parse_ref(ref)
    except RefError as exc:
        raise JobError(str(exc)) from None
    mv = session.exec(select(ModelVersion).where(ModelVersion.model == name, ModelVersion.version == version)).first()
    if mv is None:
        raise JobError(f"no model version {ref}", 404)
    return mv


def check_targets(targets: list[str] | None) -> list[str] | None:
    if targets is None:
        return None
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise JobError(f"unknown targets {bad}; choose from {', '.join(TARGETS)}")
    return targets


def parse_state(state: str | None) -> JobState | None:
    if state is None:
        return None
    try:
        return JobState(state)
    except ValueError:
        raise JobError(f"state must be one of {', '.join(s.value for s in JobState)}") from None


def enqueue(session: Session, kind: str, params: dict[str, Any], actor: str, target: str) -> Job:
    job = Job(kind=kind, params_json=json.dumps(params), created_by=actor, message="queued")
    session.add(job)
    session.flush()
    audit(session, actor, f"job.{kind}", target, json.dumps({"job": job.id}))
    session.commit()
    session.refresh(job)
    return job


def retry(session: Session, job_id: int, actor: str) -> Job:
    """A failed or cancelled job back in the queue, under the same id: a training run resumes from the last
    checkpoint its worker wrote (here or, with a bucket, on any host)."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobError(f"no job {job_id}", 404)
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        raise JobError(f"job {job_id} is {job.state}: only a failed or cancelled job can be retried", 409)
    job.state = next_job_state(job.state, JobEvent.RETRY)
    job.attempts, job.cancel_requested, job.owner, job.lease_until = 0, False, None, None
    job.finished_at, job.error, job.result_json = None, None, None
    job.message = "queued again: resumes from its last checkpoint"
    session.add(job)
    audit(session, actor, "job.retry", str(job_id))
    session.commit()
    session.refresh(job)
    return job


def cancel(session: Session, job_id: int, actor: str) -> Job:
    """A queued job is cancelled at once; a running one is stopped by its runner, which records it."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobError(f"no job {job_id}", 404)
    if job.state in FINISHED:
        raise JobError(f"job {job_id} already {job.state}", 409)
    if job.state == JobState.QUEUED:
        job.state = next_job_state(job.state, JobEvent.CANCEL)
        job.message, job.error = "cancelled before it started", "cancelled by request"
    job.cancel_requested = True
    session.add(job)
    audit(session, actor, "job.cancel", str(job_id))
    session.commit()
    session.refresh(job)
    return job
