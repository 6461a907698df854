"""Enrolling devices, rotating and revoking their credentials, their mining settings, their public shape."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, delete, select

from edge_agent.flywheel.config import MiningConfig
from edge_agent.flywheel.miners import STRATEGIES
from edge_agent.protocol.topics import valid_device_id
from fleet_server.audit import audit
from fleet_server.broker import Broker
from fleet_server.devices import problems
from fleet_server.devices import slots as slot_rows
from fleet_server.devices.tables import Deployment, Device, DevicePublic, DeviceSlot, TelemetryPoint
from fleet_server.keys import new_device_token, token_hash
from fleet_server.rollouts.states import LIVE
from fleet_server.rollouts.tables import Rollout, RolloutDevice, TelemetryAgg

RESERVED_PREFIX = "edgeloop-"


class DeviceError(Exception):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def get_device(session: Session, device_id: str) -> Device:
    d = session.get(Device, device_id)
    if d is None:
        raise DeviceError(f"no device {device_id!r}", 404)
    return d


def _check_id(device_id: str) -> None:
    if not valid_device_id(device_id):
        raise DeviceError(
            f"{device_id[:70]!r}: a device_id is 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    if device_id.lower().startswith(RESERVED_PREFIX):
        # the broker account of the server itself (readwrite on every device's topics) lives in this namespace
        raise DeviceError(f"device ids starting with {RESERVED_PREFIX!r} are reserved for the server's own accounts")


MAX_BATCH_ENROLL = 10_000


def enroll_many(session: Session, broker: Broker, device_ids: list[str], actor: str) -> dict[str, str]:
    """Many new devices and their tokens in one transaction and one broker update (a fleet provisioned at
    once). All or nothing: any invalid, repeated or already enrolled id refuses the whole batch, naming it."""
    if not 1 <= len(device_ids) <= MAX_BATCH_ENROLL:
        raise DeviceError(f"enrol 1 to {MAX_BATCH_ENROLL} devices at once, not {len(device_ids)}")
    for device_id in device_ids:
        _check_id(device_id)
    twice = sorted(d for d, n in Counter(device_ids).items() if n > 1)
    if twice:
        raise DeviceError(f"named more than once: {', '.join(twice[:10])}")
    have = session.exec(select(Device.id).where(col(Device.id).in_(device_ids))).all()
    if have:
        raise DeviceError(f"already enrolled ({len(have)}): {', '.join(sorted(have)[:10])}", 409)
    tokens = {device_id: new_device_token() for device_id in device_ids}
    session.add_all(Device(id=device_id, token_hash=token_hash(token)) for device_id, token in tokens.items())
    audit(session, actor, "devices.enrolled", "devices", f"{len(tokens)} device(s)")
    session.commit()
    broker.add_devices(tokens)
    return tokens


def enroll(session: Session, broker: Broker, device_id: str) -> str:
    """A new device and its token (returned once; only its hash is stored)."""
    _check_id(device_id)
    if session.get(Device, device_id) is not None:
        raise DeviceError(
            f"device {device_id!r} is already enrolled; a new credential: edgeloop devices rotate-token {device_id}",
            409,
        )
    token = new_device_token()
    session.add(Device(id=device_id, token_hash=token_hash(token)))
    session.commit()
    broker.add_device(device_id, token)
    return token


def rotate_token(session: Session, broker: Broker, device_id: str, actor: str) -> str:
    """A new token (returned once); the old one stops working at once over HTTP and for new MQTT connections.
    Also re-admits a revoked device."""
    d = get_device(session, device_id)
    token = new_device_token()
    d.token_hash = token_hash(token)
    session.add(d)
    audit(session, actor, "token-rotated", f"device/{device_id}")
    session.commit()
    broker.add_device(device_id, token)
    return token


def revoke(session: Session, broker: Broker, device_id: str, actor: str) -> None:
    """Shut a device out: its token matches nothing any more and the managed broker refuses it."""
    d = get_device(session, device_id)
    d.token_hash = "revoked"  # not a sha256 hex digest: no token can hash to it
    d.online = False
    session.add(d)
    audit(session, actor, "revoked", f"device/{device_id}")
    session.commit()
    broker.remove_device(device_id)


def delete_device(session: Session, broker: Broker, device_id: str, actor: str) -> None:
    """Forget a device: its credential, desired state, deployments, telemetry and its rows in finished
    rollouts. Its hard samples and their labels stay (they belong to datasets). Refused while a live rollout
    holds it."""
    d = get_device(session, device_id)
    live = session.exec(
        select(Rollout.id)
        .join(RolloutDevice, col(RolloutDevice.rollout_id) == col(Rollout.id))
        .where(RolloutDevice.device_id == device_id, col(Rollout.state).in_(list(LIVE)))
    ).first()
    if live is not None:
        raise DeviceError(f"device {device_id} is in live rollout {live}: abort it or let it finish first", 409)
    for table in (RolloutDevice, Deployment, DeviceSlot, TelemetryPoint, TelemetryAgg):
        session.exec(delete(table).where(col(table.device_id) == device_id))
    session.delete(d)
    audit(session, actor, "device.deleted", f"device/{device_id}")
    session.commit()
    broker.remove_device(device_id)


def set_mining(session: Session, device_id: str, body: dict[str, Any], actor: str) -> Device:
    """Validate hard-sample mining settings (the agent.yaml `mining:` schema) and make them desired."""
    d = get_device(session, device_id)
    try:
        cfg = MiningConfig.model_validate(body)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise DeviceError(f"mining.{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    unknown = sorted(set(cfg.strategies) - set(STRATEGIES))
    if unknown:
        raise DeviceError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    d.mining_json = cfg.model_dump_json()
    d.desired_revision += 1
    session.add(d)
    audit(session, actor, "device.mining", device_id, d.mining_json)
    session.commit()
    return d


def device_public(d: Device, shed: int = 0, slots: list[DeviceSlot] | None = None) -> DevicePublic:
    tel: dict[str, Any] = {}
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
        target=d.target,
        target_reason=d.target_reason,
        detail=d.detail,
        flywheel=tel.get("flywheel"),
        telemetry_shed=shed,
        slots=[slot_rows.public(r, d) for r in slots or []],
        problem=problems.describe(d),
    )
