"""Jobs: train, compile, synthesize; list, show (with the log tail), cancel. Admin only, audit-logged."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from fleet_server.api.deps import Id, OperatorDep, ServicesDep, SessionDep, ViewerDep
from fleet_server.jobs.service import (
    JobError,
    cancel,
    check_targets,
    dataset_of,
    enqueue,
    job_public,
    locations,
    parse_state,
    retry,
    version_of,
)
from fleet_server.jobs.tables import Job
from fleet_server.services import Services
from model_zoo.datasets.synthetic_scenes import PRESETS
from model_zoo.kinds import KINDS

router = APIRouter(prefix="/api/v1", tags=["jobs"])
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


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
    trt_int8: str = Field(
        "explicit",
        pattern="^(explicit|cache)$",
        description="TensorRT INT8: explicit (Q/DQ nodes, TensorRT 10) or cache (a calibration cache, older TensorRT)",
    )
    nproc: int = Field(1, ge=1, le=16, description="processes for DDP (torchrun)")
    workers: int = Field(1, ge=1, le=256, description="Ray Train workers (needs the server's --jobs ray://…)")
    gpus_per_worker: float = Field(0.0, ge=0, le=16, description="GPUs each Ray Train worker takes (0: CPU)")
    max_minutes: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class CompileRequest(BaseModel):
    ref: str = Field(description="NAME:VERSION whose checkpoint is compiled into a new version")
    targets: list[str] | None = None
    calibration: str = Field("minmax", pattern="^(minmax|entropy|percentile)$")
    trt_int8: str = Field(
        "explicit",
        pattern="^(explicit|cache)$",
        description="TensorRT INT8: explicit (Q/DQ nodes, TensorRT 10) or cache (a calibration cache, older TensorRT)",
    )
    dataset: str | None = Field(None, description="calibration/evaluation dataset (default: the one it was trained on)")


class SynthRequest(BaseModel):
    preset: str = Field("easy")
    count: int = Field(500, ge=1, le=200_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    width: int = Field(256, ge=32, le=4096)
    height: int = Field(256, ge=32, le=4096)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    extend: bool = Field(False, description="add to the latest version instead of starting a new dataset")


@router.post("/jobs/train", status_code=status.HTTP_202_ACCEPTED)
def train(req: TrainRequest, session: SessionDep, services: ServicesDep, who: OperatorDep) -> dict[str, Any]:
    try:
        return job_public(_train(req, session, services, who.name))
    except JobError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _train(req: TrainRequest, session: SessionDep, services: Services, actor: str) -> Job:
    if req.model not in KINDS:
        raise JobError(f"unknown model {req.model!r}; choose one of {', '.join(KINDS)}")
    if not NAME.match(req.name):
        raise JobError("name must be 1-64 of a-z 0-9 _ . - starting with a letter or digit")
    dname, dver, dtask = dataset_of(services.datasets, req.dataset)
    if KINDS[req.model].task != dtask:
        raise JobError(f"{req.model} is a {KINDS[req.model].task} model but {dname}:{dver} is {dtask} data")
    init_from = None
    if req.from_ref:
        src = version_of(session, req.from_ref)
        if not src.checkpoint:
            raise JobError(f"{req.from_ref} has no training checkpoint (it was pushed as ONNX)")
        init_from = src.checkpoint
    params = {
        **req.model_dump(exclude={"dataset"}),
        "targets": check_targets(req.targets),
        "dataset": dname,
        "dataset_version": dver,
        "dataset_ref": f"{dname}:{dver}",
        **locations(services.settings),
        "init_from": init_from,
    }
    return enqueue(session, "train", params, actor, req.name)


@router.post("/jobs/compile", status_code=status.HTTP_202_ACCEPTED)
def compile_version(
    req: CompileRequest, session: SessionDep, services: ServicesDep, who: OperatorDep
) -> dict[str, Any]:
    try:
        return job_public(_compile(req, session, services, who.name))
    except JobError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _compile(req: CompileRequest, session: SessionDep, services: Services, actor: str) -> Job:
    mv = version_of(session, req.ref)
    if not mv.checkpoint:
        raise JobError(f"{req.ref} has no training checkpoint (it was pushed as ONNX); nothing to compile")
    lineage = json.loads(mv.lineage_json or "{}")
    ds_ref = req.dataset or lineage.get("dataset")
    if not ds_ref:
        raise JobError(f"{req.ref} records no dataset: give --dataset for calibration and evaluation")
    dname, dver, _ = dataset_of(services.datasets, ds_ref)
    settings = services.settings
    params = {
        "name": mv.model,
        "source_ref": f"{mv.model}:{mv.version}",
        "checkpoint": mv.checkpoint,
        "targets": check_targets(req.targets),
        "calibration": req.calibration,
        "trt_int8": req.trt_int8,
        "dataset": dname,
        "dataset_version": dver,
        "dataset_ref": f"{dname}:{dver}",
        **locations(settings),
    }
    return enqueue(session, "compile", params, actor, req.ref)


@router.post("/datasets/{name}/synthesize", status_code=status.HTTP_202_ACCEPTED)
def synthesize(
    name: str, req: SynthRequest, session: SessionDep, services: ServicesDep, who: OperatorDep
) -> dict[str, Any]:
    if not NAME.match(name):
        raise HTTPException(422, "dataset name must be 1-64 of a-z 0-9 _ . - starting with a letter or digit")
    if req.preset not in PRESETS:
        raise HTTPException(422, f"unknown preset {req.preset!r}; choose one of {', '.join(PRESETS)}")
    params = {**req.model_dump(), "name": name, **locations(services.settings)}
    job = enqueue(session, "synthesize", params, who.name, name)
    return job_public(job)


@router.get("/jobs")
def list_jobs(
    session: SessionDep,
    _: ViewerDep,
    state: str | None = Query(None),
    limit: int = Query(50, ge=1, le=500),
) -> list[dict[str, Any]]:
    q = select(Job).order_by(col(Job.id).desc()).limit(limit)
    try:
        wanted = parse_state(state)
    except JobError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if wanted is not None:
        q = q.where(Job.state == wanted)
    return [job_public(j) for j in session.exec(q).all()]


@router.get("/jobs/{job_id}")
def show_job(
    job_id: Id, session: SessionDep, services: ServicesDep, _: ViewerDep, tail: int = Query(20, ge=0, le=1000)
) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job_public(job, services.jobs_dir, tail)


@router.post("/jobs/{job_id}/retry")
def retry_job(job_id: Id, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    """A failed or cancelled job runs again (the same id): training resumes from its last checkpoint."""
    try:
        return job_public(retry(session, job_id, who.name))
    except JobError as exc:
        raise HTTPException(exc.status, str(exc)) from None


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: Id, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    try:
        return job_public(cancel(session, job_id, who.name))
    except JobError as exc:
        raise HTTPException(exc.status, str(exc)) from None
