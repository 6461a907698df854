"""The desired-state message of a device, built from the database (the newest deployment per slot)."""

from __future__ import annotations

import json

from sqlmodel import Session, col, select

from edge_agent.protocol.messages import Deployment as DeploymentMsg
from edge_agent.protocol.messages import DesiredState, ShadowSpec
from edge_agent.protocol.signing import SignedManifest
from fleet_server.devices.tables import Deployment, Device
from fleet_server.registry.tables import ModelVersion


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
