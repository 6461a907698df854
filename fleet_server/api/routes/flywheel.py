"""Retrain policies and approvals: the flywheel's controls. Admin only, audit-logged."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.protocol.manifest import parse_ref
from fleet_server.api.deps import Id, OperatorDep, ServicesDep, SessionDep, ViewerDep
from fleet_server.audit import audit
from fleet_server.db import utcnow
from fleet_server.flywheel.policy import check_policies, policies_public
from fleet_server.flywheel.tables import RetrainPolicy
from fleet_server.jobs.results import start_rollout
from fleet_server.jobs.tables import Job

router = APIRouter(prefix="/api/v1/flywheel", tags=["flywheel"])


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str | None = Field(None, min_length=1, max_length=64, description="needed for a new policy")
    min_new_labels: int = Field(50, ge=1, le=1_000_000)
    epochs: int = Field(4, ge=1, le=1000)
    budget_points: float = Field(1.0, ge=0, le=100)
    rollout: str = Field("approve", pattern="^(auto|approve|none)$")
    selector: str = Field("all", max_length=500)
    canary: str = Field("1", max_length=16)
    waves: str = Field("100%", max_length=100)
    bake_s: float = Field(600.0, ge=0)
    drift_drop: float | None = Field(
        None, gt=0, lt=1, description="also retrain when mean confidence drops by this share (0.2 = 20 %)"
    )
    drift_window_min: float = Field(60.0, ge=1, le=10080, description="recent window compared with the time before")
    enabled: bool = True


@router.put("/policies/{model}")
def set_policy(model: str, body: PolicyIn, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    """A new policy takes the defaults for what the body leaves out; an existing one changes only what the body
    names (`--disable` alone disables, and keeps the rest)."""
    pol = session.get(RetrainPolicy, model)
    if pol is None:
        if body.dataset is None:
            raise HTTPException(422, f"{model} has no retrain policy yet: give the dataset its new labels extend")
        pol = RetrainPolicy(model=model, dataset=body.dataset)
        changes = body.model_dump()
    else:
        changes = body.model_dump(exclude_unset=True)
    for k, v in changes.items():
        if k != "dataset" or v is not None:
            setattr(pol, k, v)
    pol.created_by, pol.updated_at = who.name, utcnow()
    session.add(pol)
    audit(session, who.name, "flywheel.policy", model, body.model_dump_json())
    session.commit()
    session.refresh(pol)
    return pol.model_dump()


@router.get("/policies")
def list_policies(session: SessionDep, _: ViewerDep) -> list[dict[str, Any]]:
    return policies_public(session)


@router.post("/check")
def check_now(services: ServicesDep, _: OperatorDep) -> dict[str, Any]:
    return {
        "queued": check_policies(
            services.engine, services.settings, services.datasets, services.sample_blobs, services.store
        )
    }


@router.post("/approve/{job_id}")
def approve(job_id: Id, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None or job.kind != "retrain":
        raise HTTPException(404, f"no retrain job {job_id}")
    result = json.loads(job.result_json or "{}")
    if not result.get("awaiting_approval"):
        raise HTTPException(409, f"job {job_id} has nothing awaiting approval ({job.message})")
    name, version = parse_ref(result["model"])
    rollout = start_rollout(session, json.loads(job.params_json), name, version, actor=who.name)
    result.update(awaiting_approval=False, rollout=rollout, approved_by=who.name)
    job.result_json = json.dumps(result)
    job.message = f"approved by {who.name}; rollout {rollout}"
    session.add(job)
    session.commit()
    return {"job": job_id, "rollout": rollout, "model": result["model"]}
