"""Setting a device's desired state, and building the desired message from the database."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from edge_agent.protocol.messages import Deployment as DeploymentMsg
from edge_agent.protocol.messages import DesiredState, ShadowSpec
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
    shadow_mv = None
    if req.shadow_model or req.shadow_version is not None:
        if not (req.shadow_model and req.shadow_version is not None):
            raise DeployError("a shadow candidate needs both shadow_model and shadow_version", 422)
        shadow_mv = session.exec(
            select(ModelVersion).where(
                ModelVersion.model == req.shadow_model, ModelVersion.version == req.shadow_version
            )
        ).first()
        if shadow_mv is None:
            raise DeployError(f"no model version {req.shadow_model}:{req.shadow_version} for the shadow", 404)
        if shadow_mv.task != mv.task:
            raise DeployError(f"shadow {shadow_mv.model} is a {shadow_mv.task} model; {mv.model} is {mv.task}", 422)
    signed = rollback_manifest(mv, app.keys) if rollback else mv.signed_manifest
    device.desired_revision += 1
    dep = Deployment(
        device_id=device_id,
        slot=req.slot,
        version_id=int(mv.id or 0),
        revision=device.desired_revision,
        signed_manifest=signed,
        health_window_s=req.health_window_s if req.health_window_s is not None else app.settings.health_window_s,
        min_fps_ratio=req.min_fps_ratio,
        shadow_version_id=shadow_mv.id if shadow_mv else None,
        shadow_share=req.shadow_share if shadow_mv else None,
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
    if not latest and device.mining_json is None:
        return None
    deps = []
    for d in latest.values():
        shadow = None
        if d.shadow_version_id is not None:
            smv = session.get(ModelVersion, d.shadow_version_id)
            if smv is not None:
                shadow = ShadowSpec(
                    manifest=SignedManifest.model_validate_json(smv.signed_manifest), share=d.shadow_share or 0.1
                )
        deps.append(
            DeploymentMsg(
                slot=d.slot,
                manifest=SignedManifest.model_validate_json(d.signed_manifest),
                health_window_s=d.health_window_s,
                min_fps_ratio=d.min_fps_ratio,
                shadow=shadow,
            )
        )
    mining = json.loads(device.mining_json) if device.mining_json else None
    return DesiredState(device_id=device_id, revision=device.desired_revision, deployments=deps, mining=mining)
