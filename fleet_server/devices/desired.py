"""The desired-state message of a device, built from the database (the newest deployment per slot)."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, col, select

from edge_agent.protocol.messages import Deployment as DeploymentMsg
from edge_agent.protocol.messages import DesiredState, MeasureSpec, ShadowSpec
from edge_agent.protocol.signing import SignedManifest
from fleet_server.devices.tables import Deployment, Device
from fleet_server.registry.measurements import preferred_target
from fleet_server.registry.tables import Artifact, ModelVersion


def desired_message(session: Session, device_id: str, cache: dict[Any, Any] | None = None) -> DesiredState | None:
    """`cache`: shared by the messages of one batch (a wave's chunk), for what every device of it looks up."""
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
                measure=_measure_spec(session, device, d, {} if cache is None else cache),
                slot=d.slot,
                revision=d.revision,
                manifest=SignedManifest.model_validate_json(d.signed_manifest),
                health_window_s=d.health_window_s,
                min_fps_ratio=d.min_fps_ratio,
                shadow=shadow,
                sources=json.loads(d.sources_json) if d.sources_json else None,
            )
        )
    mining = json.loads(device.mining_json) if device.mining_json else None
    return DesiredState(device_id=device_id, revision=device.desired_revision, deployments=deps, mining=mining)


def _measure_spec(session: Session, device: Device, d: Deployment, cache: dict[Any, Any]) -> MeasureSpec | None:
    """The deployment's timing budget, and the target this device's hardware chose for an earlier version
    (only where the deployment asked for no budget of its own: a budget asked for is a wish to measure)."""
    hardware = json.loads(device.capabilities_json).get("hardware_key") if device.capabilities_json else None
    prefer = None
    if hardware and d.measure_budget_s is None:
        key = ("prefer", hardware, d.version_id)
        if key not in cache:
            mv = session.get(ModelVersion, d.version_id)
            if mv is not None:
                targets = set(session.exec(select(Artifact.target).where(Artifact.version_id == mv.id)).all())
                cache[key] = preferred_target(session, mv.model, mv.version, hardware, targets)
        prefer = cache.get(key)
    if prefer is None and d.measure_budget_s is None:
        return None
    return MeasureSpec(
        budget_s=d.measure_budget_s, prefer=prefer[0] if prefer else None, prefer_from=prefer[1] if prefer else None
    )
