"""Devices: enroll, rotate or revoke a credential, list, show, set the desired deployment and mining."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field, StringConstraints
from sqlmodel import select

from fleet_server.api.deps import AdminDep, Limit, Offset, OperatorDep, ServicesDep, SessionDep, ViewerDep
from fleet_server.devices import service
from fleet_server.devices import slots as slot_rows
from fleet_server.devices.deploy import DeployError
from fleet_server.devices.service import DeviceError, device_public
from fleet_server.devices.tables import DeployRequest, Device, DeviceEnrolled, DevicePublic
from fleet_server.services import Services

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


class EnrollBatch(BaseModel):
    device_ids: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        min_length=1, max_length=service.MAX_BATCH_ENROLL
    )


def _credential(services: Services, device_id: str, token: str) -> DeviceEnrolled:
    return DeviceEnrolled(
        device_id=device_id,
        token=token,
        root_public_key=services.keys.root_public,
        server_url=services.settings.base_url,
        mqtt_url=services.mqtt_public_url,
        mqtt_ca=services.broker.ca_pem,
    )


def _fail(exc: DeviceError | DeployError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeviceEnrolled)
def enroll(body: dict, session: SessionDep, services: ServicesDep, _: AdminDep) -> DeviceEnrolled:
    device_id = str(body.get("device_id", ""))
    try:
        token = service.enroll(session, services.broker, device_id)
    except DeviceError as exc:
        raise _fail(exc) from None
    return _credential(services, device_id, token)


@router.post("/batch", status_code=status.HTTP_201_CREATED, response_model=list[DeviceEnrolled])
def enroll_batch(body: EnrollBatch, session: SessionDep, services: ServicesDep, who: AdminDep) -> list[DeviceEnrolled]:
    """Enrol many devices at once (all or nothing): one transaction and one broker update."""
    try:
        tokens = service.enroll_many(session, services.broker, body.device_ids, who.actor)
    except DeviceError as exc:
        raise _fail(exc) from None
    return [_credential(services, device_id, token) for device_id, token in tokens.items()]


@router.post("/{device_id}/rotate-token", response_model=DeviceEnrolled)
def rotate_token(device_id: str, session: SessionDep, services: ServicesDep, who: AdminDep) -> DeviceEnrolled:
    """A new token for a device (shown once); the old one stops working at once over HTTP and for new
    MQTT connections. Also re-admits a revoked device."""
    try:
        token = service.rotate_token(session, services.broker, device_id, who.actor)
    except DeviceError as exc:
        raise _fail(exc) from None
    return _credential(services, device_id, token)


@router.post("/{device_id}/revoke")
def revoke(device_id: str, session: SessionDep, services: ServicesDep, who: AdminDep) -> dict[str, Any]:
    """Shut a device out (stolen, decommissioned): its token matches nothing any more and the managed broker
    refuses it; its history stays. `rotate-token` lets it back in with a new credential."""
    try:
        service.revoke(session, services.broker, device_id, who.actor)
    except DeviceError as exc:
        raise _fail(exc) from None
    return {"device_id": device_id, "revoked": True}


@router.delete("/{device_id}")
def delete_device(device_id: str, session: SessionDep, services: ServicesDep, who: AdminDep) -> dict[str, Any]:
    """Forget a device (its credential, desired state, deployments, telemetry, finished-rollout rows); its
    hard samples stay. 409 while a live rollout holds it. The agent, if still running, is shut out."""
    try:
        service.delete_device(session, services.broker, device_id, who.actor)
    except DeviceError as exc:
        raise _fail(exc) from None
    services.bridge.clear_desired(device_id)
    return {"device_id": device_id, "deleted": True}


@router.get("", response_model=list[DevicePublic])
def list_devices(
    session: SessionDep, services: ServicesDep, _: ViewerDep, limit: Limit = 500, offset: Offset = 0
) -> list[DevicePublic]:
    rows = session.exec(select(Device).order_by(Device.id).offset(offset).limit(limit)).all()
    by_device = slot_rows.rows_of(session, [d.id for d in rows])
    return [device_public(d, services.bridge.shed.get(d.id, 0), by_device.get(d.id)) for d in rows]


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, session: SessionDep, services: ServicesDep, _: ViewerDep) -> DevicePublic:
    try:
        d = service.get_device(session, device_id)
        return device_public(d, services.bridge.shed.get(device_id, 0), slot_rows.rows_of(session, [d.id]).get(d.id))
    except DeviceError as exc:
        raise _fail(exc) from None


@router.put("/{device_id}/deployment")
def deploy(
    device_id: str, body: DeployRequest, session: SessionDep, services: ServicesDep, who: OperatorDep
) -> dict[str, Any]:
    try:
        dep, rollback = services.deployer.deploy(session, device_id, body, who.name)
    except DeployError as exc:
        raise _fail(exc) from exc
    return {
        "device_id": device_id,
        "model": body.model,
        "version": body.version,
        "revision": dep.revision,
        "rollback": rollback,
    }


@router.put("/{device_id}/mining")
def set_mining(device_id: str, body: dict, session: SessionDep, services: ServicesDep, who: AdminDep) -> dict:
    """Hard-sample mining settings for a device (the agent.yaml `mining:` schema), sent in its desired state."""
    try:
        d = service.set_mining(session, device_id, body, who.name)
    except DeviceError as exc:
        raise _fail(exc) from None
    services.bridge.publish_desired(session, device_id)
    return {"device_id": device_id, "revision": d.desired_revision, "mining": json.loads(d.mining_json or "{}")}
