"""Devices: enroll, list, show, and set desired deployment."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request, status
from sqlmodel import select

from edge_agent.protocol.topics import valid_device_id
from fleet_server.api.deps import AdminDep, OperatorDep, SessionDep, ViewerDep
from fleet_server.deploy import DeployError, deploy_version
from fleet_server.keys import new_device_token, token_hash
from fleet_server.models import DeployRequest, Device, DeviceEnrolled, DevicePublic

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


def to_public(d: Device) -> DevicePublic:
    tel: dict = {}
    if d.telemetry_json:
        try:
            tel = json.loads(d.telemetry_json)
        except ValueError:
            tel = {}
    return DevicePublic(
        id=d.id,
        tags=json.loads(d.tags_json or "{}"),
        online=d.online,
        last_seen=d.last_seen,
        model=d.model,
        version=d.version,
        state=d.state,
        target_version=d.target_version,
        reason=d.reason,
        fps=d.fps,
        latency_ms_p95=d.latency_ms_p95,
        staleness_ms_p99=d.staleness_ms_p99,
        desired_revision=d.desired_revision,
        reported_revision=d.reported_revision,
        last_prediction=tel.get("last_prediction", []),
        source_ok=tel.get("source_ok"),
        source_error=tel.get("source_error"),
        sources=tel.get("sources", []),
        shadow=tel.get("shadow"),
        shadow_version=d.shadow_version,
        shadow_reason=d.shadow_reason,
        flywheel=tel.get("flywheel"),
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeviceEnrolled)
def enroll(body: dict, request: Request, session: SessionDep, _: AdminDep) -> DeviceEnrolled:
    device_id = str(body.get("device_id", ""))
    if not valid_device_id(device_id):
        raise HTTPException(422, "device_id must be 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit")
    if session.get(Device, device_id) is not None:
        raise HTTPException(409, f"device {device_id!r} is already enrolled")
    token = new_device_token()
    session.add(Device(id=device_id, token_hash=token_hash(token)))
    session.commit()
    request.app.state.broker.add_device(device_id, token)
    return _credential(request, device_id, token)


def _credential(request: Request, device_id: str, token: str) -> DeviceEnrolled:
    app = request.app.state
    return DeviceEnrolled(
        device_id=device_id,
        token=token,
        root_public_key=app.keys.root_public,
        server_url=app.settings.base_url,
        mqtt_url=app.mqtt_public_url,
    )


@router.post("/{device_id}/rotate-token", response_model=DeviceEnrolled)
def rotate_token(device_id: str, request: Request, session: SessionDep, who: AdminDep) -> DeviceEnrolled:
    """A new token for a device (shown once); the old one stops working at once over HTTP and for new
    MQTT connections. Also re-admits a revoked device."""
    from fleet_server.rollouts.service import audit

    d = session.get(Device, device_id)
    if d is None:
        raise HTTPException(404, f"no device {device_id!r}")
    token = new_device_token()
    d.token_hash = token_hash(token)
    session.add(d)
    audit(session, who.actor, "token-rotated", f"device/{device_id}")
    session.commit()
    request.app.state.broker.add_device(device_id, token)
    return _credential(request, device_id, token)


@router.post("/{device_id}/revoke")
def revoke(device_id: str, request: Request, session: SessionDep, who: AdminDep) -> dict:
    """Shut a device out (stolen, decommissioned): its token matches nothing any more and the managed broker
    refuses it; its history stays. `rotate-token` lets it back in with a new credential."""
    from fleet_server.rollouts.service import audit

    d = session.get(Device, device_id)
    if d is None:
        raise HTTPException(404, f"no device {device_id!r}")
    d.token_hash = "revoked"  # not a sha256 hex digest: no token can hash to it
    d.online = False
    session.add(d)
    audit(session, who.actor, "revoked", f"device/{device_id}")
    session.commit()
    request.app.state.broker.remove_device(device_id)
    return {"device_id": device_id, "revoked": True}


@router.get("", response_model=list[DevicePublic])
def list_devices(session: SessionDep, _: ViewerDep, limit: int = 500, offset: int = 0) -> list[DevicePublic]:
    rows = session.exec(select(Device).order_by(Device.id).offset(offset).limit(min(limit, 5000))).all()
    return [to_public(d) for d in rows]


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, session: SessionDep, _: ViewerDep) -> DevicePublic:
    d = session.get(Device, device_id)
    if d is None:
        raise HTTPException(404, f"no device {device_id!r}")
    return to_public(d)


@router.put("/{device_id}/deployment")
def deploy(device_id: str, body: DeployRequest, request: Request, session: SessionDep, who: OperatorDep) -> dict:
    try:
        dep, rollback = deploy_version(session, request.app.state, device_id, body, who.name)
    except DeployError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return {
        "device_id": device_id,
        "model": body.model,
        "version": body.version,
        "revision": dep.revision,
        "rollback": rollback,
    }


@router.put("/{device_id}/mining")
def set_mining(device_id: str, body: dict, request: Request, session: SessionDep, who: AdminDep) -> dict:
    """Hard-sample mining settings for a device (the agent.yaml `mining:` schema), sent in its desired state."""
    from pydantic import ValidationError

    from edge_agent.flywheel.config import MiningConfig
    from edge_agent.flywheel.miners import STRATEGIES
    from fleet_server.rollouts.service import audit

    d = session.get(Device, device_id)
    if d is None:
        raise HTTPException(404, f"no device {device_id!r}")
    try:
        cfg = MiningConfig.model_validate(body)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise HTTPException(422, f"mining.{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    unknown = sorted(set(cfg.strategies) - set(STRATEGIES))
    if unknown:
        raise HTTPException(422, f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    d.mining_json = cfg.model_dump_json()
    d.desired_revision += 1
    session.add(d)
    audit(session, who.name, "device.mining", device_id, d.mining_json)
    session.commit()
    request.app.state.bridge.publish_desired(session, device_id)
    return {"device_id": device_id, "revision": d.desired_revision, "mining": json.loads(d.mining_json)}
