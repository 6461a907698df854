"""Rollouts and device tags: create, list, status, pause/resume/promote/abort/rollback, audit log."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Query
from sqlmodel import col, select

from fleet_server.api.deps import AdminDep, Id, OperatorDep, SessionDep, ViewerDep
from fleet_server.audit import audit, entries
from fleet_server.devices.tables import Device
from fleet_server.rollouts.selectors import SelectorError, parse_tags
from fleet_server.rollouts.service import RolloutCreate, RolloutError, act, create_rollout, preview, status
from fleet_server.rollouts.tables import Rollout

router = APIRouter(prefix="/api/v1", tags=["rollouts"])


@router.put("/devices/{device_id}/tags")
def set_tags(device_id: str, body: dict, session: SessionDep, who: AdminDep) -> dict:
    d = session.get(Device, device_id)
    if d is None:
        raise HTTPException(404, f"no device {device_id!r}")
    try:
        tags = parse_tags([f"{k}={v}" for k, v in dict(body.get("tags", {})).items()])
    except SelectorError as exc:
        raise HTTPException(422, str(exc)) from exc
    merged = {**json.loads(d.tags_json or "{}"), **tags}
    for k in body.get("remove", []):
        merged.pop(k, None)
    d.tags_json = json.dumps(merged, sort_keys=True)
    session.add(d)
    audit(session, who.name, "tagged", f"device/{device_id}", d.tags_json)
    session.commit()
    return {"device_id": device_id, "tags": merged}


@router.post("/rollouts", status_code=201)
def create(body: RolloutCreate, session: SessionDep, who: OperatorDep) -> dict:
    try:
        r, superseded = create_rollout(session, body, who.name)
    except RolloutError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    out = status(session, r)
    out["superseded"] = superseded
    return out


@router.get("/rollouts")
def list_rollouts(session: SessionDep, _: ViewerDep, limit: int = Query(50, ge=1, le=500)) -> list[dict]:
    rows = session.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(limit)).all()
    return [status(session, r) for r in rows]


@router.get("/rollouts/preview")
def preview_selector(session: SessionDep, _: ViewerDep, selector: str = Query(..., max_length=2000)) -> dict:
    """The devices a selector matches now: a count, how many are online, the first ids."""
    try:
        return preview(session, selector)
    except RolloutError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


@router.get("/rollouts/{rollout_id}")
def get_rollout(rollout_id: Id, session: SessionDep, _: ViewerDep) -> dict:
    r = session.get(Rollout, rollout_id)
    if r is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    out = status(session, r)
    out["audit"] = [
        {"at": a.at, "actor": a.actor, "action": a.action, "detail": a.detail}
        for a in entries(session, target=f"rollout/{rollout_id}", limit=1000, oldest_first=True)
    ]
    return out


@router.post("/rollouts/{rollout_id}/{action}")
def rollout_action(rollout_id: Id, action: str, session: SessionDep, who: OperatorDep) -> dict:
    if action not in ("pause", "resume", "promote", "abort", "rollback"):
        raise HTTPException(404, f"unknown action {action!r}")
    try:
        r = act(session, rollout_id, action, who.name)
    except RolloutError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return status(session, r)
