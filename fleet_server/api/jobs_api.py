"""Jobs: train, compile, synthesize; list, show (with the log tail), cancel. Admin only, audit-logged."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from fleet_server.api.deps import OperatorDep, SessionDep, ViewerDep
from fleet_server.cli.client import parse_ref
from fleet_server.jobs.runner import log_tail
from fleet_server.jobs.tables import JOB_STATES, Job
from fleet_server.models import ModelVersion
from fleet_server.rollouts.service import audit
from fleet_server.zoo import datasets_dir

router = APIRouter(prefix="/api/v1", tags=["jobs"])
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
SERVER_PATHS = ("datasets_dir", "checkpoint", "init_from", "current_onnx")  # not shown to API clients


class TrainRequest(BaseModel):
    dataset: str = Field(description="NAME or NAME:VERSION of a dataset version")
    model: str = Field("eldet", description="architecture: eldet | mobilenet_v3_small | resnet18")
    name: str = Field(description="model name the result is registered under")
    epochs: int = Field(20, ge=1, le=1000)
    batch: int = Field(16, ge=1, le=1024)
    lr: float = Field(2e-3, gt=0, le=1)
    size: int | None = Field(None, ge=32, le=2048)
    from_ref: str | None = Field(None, description="fine-tune from this model version (NAME:VERSION)")
    targets: list[str] | None = Field(None, description="compile targets (default: all)")
    calibration: str = Field("minmax", pattern="^(minmax|entropy|percentile)$")
    nproc: int = Field(1, ge=1, le=16, description="processes for DDP (torchrun)")
    max_minutes: float | None = Field(None, gt=0)
    seed: int = 0


class CompileRequest(BaseModel):
    ref: str = Field(description="NAME:VERSION whose checkpoint is compiled into a new version")
    targets: list[str] | None = None
    calibration: str = Field("minmax", pattern="^(minmax|entropy|percentile)$")
    dataset: str | None = Field(None, description="calibration/evaluation dataset (default: the one it was trained on)")


class SynthRequest(BaseModel):
    preset: str = Field("easy")
    count: int = Field(500, ge=1, le=200_000)
    seed: int = 0
    width: int = Field(256, ge=32, le=4096)
    height: int = Field(256, ge=32, le=4096)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    extend: bool = Field(False, description="add to the latest version instead of starting a new dataset")


def job_public(job: Job, jobs_dir: Any = None, tail: int = 0) -> dict[str, Any]:
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


def _dataset(request: Request, ref: str) -> tuple[str, int, str]:
    from model_zoo.datasets.store import DatasetError, DatasetStore

    name, _, ver = ref.partition(":")
    if ver and not ver.isdigit():
        raise HTTPException(422, f"dataset must be NAME or NAME:VERSION, got {ref!r}")
    try:
        dv = DatasetStore(datasets_dir(request.app.state.settings.data_dir)).load(name, int(ver) if ver else None)
    except DatasetError as exc:
        raise HTTPException(404, str(exc)) from None
    return dv.name, dv.version, dv.task


def _version(session: Session, ref: str) -> ModelVersion:
    try:
        name, version = parse_ref(ref)
    except Exception as exc:  # noqa: BLE001 - CliError or ValueError: both mean a bad reference
        raise HTTPException(422, str(exc)) from None
    mv = session.exec(select(ModelVersion).where(ModelVersion.model == name, ModelVersion.version == version)).first()
    if mv is None:
        raise HTTPException(404, f"no model version {ref}")
    return mv


def _targets(targets: list[str] | None) -> list[str] | None:
    from model_zoo.compile import TARGETS

    if targets is None:
        return None
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise HTTPException(422, f"unknown targets {bad}; choose from {', '.join(TARGETS)}")
    return targets


def _enqueue(session: Session, kind: str, params: dict[str, Any], actor: str, target: str) -> Job:
    job = Job(kind=kind, params_json=json.dumps(params), created_by=actor, message="queued")
    session.add(job)
    session.flush()
    audit(session, actor, f"job.{kind}", target, json.dumps({"job": job.id}))
    session.commit()
    session.refresh(job)
    return job


@router.post("/jobs/train", status_code=status.HTTP_202_ACCEPTED)
def train(req: TrainRequest, request: Request, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    from model_zoo.kinds import KINDS

    if req.model not in KINDS:
        raise HTTPException(422, f"unknown model {req.model!r}; choose one of {', '.join(KINDS)}")
    if not NAME.match(req.name):
        raise HTTPException(422, "name must be 1-64 of a-z 0-9 _ . - starting with a letter or digit")
    dname, dver, dtask = _dataset(request, req.dataset)
    if KINDS[req.model].task != dtask:
        raise HTTPException(422, f"{req.model} is a {KINDS[req.model].task} model but {dname}:{dver} is {dtask} data")
    init_from = None
    if req.from_ref:
        src = _version(session, req.from_ref)
        if not src.checkpoint:
            raise HTTPException(422, f"{req.from_ref} has no training checkpoint (it was pushed as ONNX)")
        init_from = str(request.app.state.settings.data_dir / src.checkpoint)
    settings = request.app.state.settings
    params = {
        **req.model_dump(exclude={"dataset"}),
        "targets": _targets(req.targets),
        "dataset": dname,
        "dataset_version": dver,
        "dataset_ref": f"{dname}:{dver}",
        "datasets_dir": str(datasets_dir(settings.data_dir)),
        "init_from": init_from,
    }
    job = _enqueue(session, "train", params, who.name, req.name)
    return job_public(job)


@router.post("/jobs/compile", status_code=status.HTTP_202_ACCEPTED)
def compile_version(req: CompileRequest, request: Request, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    mv = _version(session, req.ref)
    if not mv.checkpoint:
        raise HTTPException(422, f"{req.ref} has no training checkpoint (it was pushed as ONNX); nothing to compile")
    lineage = json.loads(mv.lineage_json or "{}")
    ds_ref = req.dataset or lineage.get("dataset")
    if not ds_ref:
        raise HTTPException(422, f"{req.ref} records no dataset: give --dataset for calibration and evaluation")
    dname, dver, _ = _dataset(request, ds_ref)
    settings = request.app.state.settings
    params = {
        "name": mv.model,
        "source_ref": f"{mv.model}:{mv.version}",
        "checkpoint": str(settings.data_dir / mv.checkpoint),
        "targets": _targets(req.targets),
        "calibration": req.calibration,
        "dataset": dname,
        "dataset_version": dver,
        "dataset_ref": f"{dname}:{dver}",
        "datasets_dir": str(datasets_dir(settings.data_dir)),
    }
    job = _enqueue(session, "compile", params, who.name, req.ref)
    return job_public(job)


@router.post("/datasets/{name}/synthesize", status_code=status.HTTP_202_ACCEPTED)
def synthesize(name: str, req: SynthRequest, request: Request, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    from model_zoo.datasets.synthetic_scenes import PRESETS

    if not NAME.match(name):
        raise HTTPException(422, "dataset name must be 1-64 of a-z 0-9 _ . - starting with a letter or digit")
    if req.preset not in PRESETS:
        raise HTTPException(422, f"unknown preset {req.preset!r}; choose one of {', '.join(PRESETS)}")
    params = {**req.model_dump(), "name": name, "datasets_dir": str(datasets_dir(request.app.state.settings.data_dir))}
    job = _enqueue(session, "synthesize", params, who.name, name)
    return job_public(job)


@router.get("/jobs")
def list_jobs(
    request: Request,
    session: SessionDep,
    _: ViewerDep,
    state: str | None = Query(None),
    limit: int = Query(50, ge=1, le=500),
) -> list[dict[str, Any]]:
    q = select(Job).order_by(col(Job.id).desc()).limit(limit)
    if state:
        if state not in JOB_STATES:
            raise HTTPException(422, f"state must be one of {', '.join(JOB_STATES)}")
        q = q.where(Job.state == state)
    return [job_public(j) for j in session.exec(q).all()]


@router.get("/jobs/{job_id}")
def show_job(
    job_id: int, request: Request, session: SessionDep, _: ViewerDep, tail: int = Query(20, ge=0, le=1000)
) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job_public(job, request.app.state.jobs_dir, tail)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: int, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if job.state in ("succeeded", "failed", "cancelled"):
        raise HTTPException(409, f"job {job_id} already {job.state}")
    if job.state == "queued":
        job.state, job.message, job.error = "cancelled", "cancelled before it started", "cancelled by request"
    job.cancel_requested = True
    session.add(job)
    audit(session, who.name, "job.cancel", str(job_id))
    session.commit()
    session.refresh(job)
    return job_public(job)
