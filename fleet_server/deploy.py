"""Setting a device's desired state, and building the desired message from the database."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from edge_agent.protocol.messages import Deployment as DeploymentMsg
from edge_agent.protocol.messages import DesiredState
from edge_agent.protocol.signing import SignedManifest
from fleet_server.models import Deployment, DeployRequest, Device, ModelVersion
from fleet_server.registry import rollback_manifest

log = logging.getLogger(__name__)


class DeployError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def deploy_version(
    session: Session, app: Any, device_id: str, req: DeployRequest, actor: str
) -> tuple[Deployment, bool]:
    device = session.get(Device, device_id)
    if device is None:
        raise DeployError(f"no device {device_id!r}; enroll it first", 404)
    mv = session.exec(
        select(ModelVersion).where(ModelVersion.model == req.model, ModelVersion.version == req.version)
    ).first()
    if mv is None:
        raise DeployError(f"no model version {req.model}:{req.version}", 404)
    highest = session.exec(
        select(func.max(ModelVersion.version))
        .join(Deployment, col(Deployment.version_id) == col(ModelVersion.id))
        .where(Deployment.device_id == device_id, ModelVersion.model == req.model)
    ).one()
    rollback = highest is not None and mv.version < int(highest)
    signed = rollback_manifest(mv, app.keys) if rollback else mv.signed_manifest
    device.desired_revision += 1
    dep = Deployment(
        device_id=device_id,
        slot=req.slot,
        version_id=int(mv.id or 0),
        revision=device.desired_revision,
        signed_manifest=signed,
        health_window_s=req.health_window_s if req.health_window_s is not None else app.settings.health_window_s,
        created_by=actor,
    )
    session.add(device)
    session.add(dep)
    session.commit()
    session.refresh(dep)
    log.info(
        "desired %s:%s -> %s (revision %d%s) by %s",
        req.model,
        req.version,
        device_id,
        dep.revision,
        ", signed rollback" if rollback else "",
        actor,
    )
    app.bridge.publish_desired(session, device_id)
    return dep, rollback


def desired_message(session: Session, device_id: str) -> DesiredState | None:
    device = session.get(Device, device_id)
    if device is None:
        return None
    rows = session.exec(
        select(Deployment).where(Deployment.device_id == device_id).order_by(col(Deployment.id).desc())
    ).all()
    latest: dict[str, Deployment] = {}
    for row in rows:
        latest.setdefault(row.slot, row)
    if not latest:
        return None
    deps = [
        DeploymentMsg(
            slot=d.slot,
            manifest=SignedManifest.model_validate_json(d.signed_manifest),
            health_window_s=d.health_window_s,
        )
        for d in latest.values()
    ]
    return DesiredState(device_id=device_id, revision=device.desired_revision, deployments=deps)
