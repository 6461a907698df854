"""Setting a device's desired state: validate, record the revision, publish."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet_server.devices.slots import device_slots
from fleet_server.devices.tables import Deployment, DeployRequest, Device
from fleet_server.keys import KeyRing
from fleet_server.registry.service import rollback_manifest
from fleet_server.registry.tables import ModelVersion

log = logging.getLogger(__name__)


class DeployError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class DesiredPublisher(Protocol):
    def publish_desired(self, session: Session, device_id: str, cache: dict[Any, Any] | None = None) -> None: ...


@dataclass(frozen=True)
class Deployer:
    """Sets desired state: a Deployment row (revision + 1), signed for a rollback, then published retained."""

    keys: KeyRing
    publisher: DesiredPublisher
    default_health_window_s: float

    def deploy(self, session: Session, device_id: str, req: DeployRequest, actor: str) -> tuple[Deployment, bool]:
        return deploy_version(session, self, device_id, req, actor)

    def resume(self, session: Session, items: list[tuple[str, DeployRequest]]) -> set[str]:
        """Of a batch that a step cut short may have deployed: those whose desired state already says so are
        published again (the step may have died before it published them) and returned; deploy the rest."""
        done = already_desired(session, items)
        shared: dict[Any, Any] = {}
        for device_id in sorted(done):
            self.publisher.publish_desired(session, device_id, shared)
        return done

    def deploy_many(self, session: Session, items: list[tuple[str, DeployRequest]], actor: str) -> dict[str, str]:
        return deploy_many(session, self, items, actor)


def deploy_version(
    session: Session, deployer: Deployer, device_id: str, req: DeployRequest, actor: str
) -> tuple[Deployment, bool]:
    device = session.get(Device, device_id)
    if device is None:
        raise DeployError(f"no device {device_id!r}; enroll it first", 404)
    dep, rollback = _record(session, deployer, device, req, actor, {})
    session.commit()
    session.refresh(dep)
    log.info(
        "desired %s:%s -> %s%s (revision %d%s) by %s",
        req.model,
        req.version,
        device_id,
        "" if req.slot == "default" else f" slot {req.slot}",
        dep.revision,
        ", signed rollback" if rollback else "",
        actor,
    )
    deployer.publisher.publish_desired(session, device_id)
    return dep, rollback


def deploy_many(
    session: Session, deployer: Deployer, items: list[tuple[str, DeployRequest]], actor: str
) -> dict[str, str]:
    """Set the desired state of many devices in one transaction (a rollout wave takes its devices in chunks),
    then publish each. Returns the devices refused, with why; the others were deployed."""
    ids = [device_id for device_id, _ in items]
    devices = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(ids))).all()}
    refused: dict[str, str] = {}
    done: list[str] = []
    cache: dict[Any, Any] = {"highest": _highest_deployed(session, ids, {(r.slot, r.model) for _, r in items})}
    with session.no_autoflush:  # one flush for the batch: each device's lookups do not need the others' rows
        for device_id, req in items:
            device = devices.get(device_id)
            try:
                if device is None:
                    raise DeployError(f"no device {device_id!r}; enroll it first", 404)
                _record(session, deployer, device, req, actor, cache)  # validates before it changes anything
                done.append(device_id)
            except DeployError as exc:
                refused[device_id] = str(exc)
    session.commit()
    if items:
        req = items[0][1]
        log.info("desired %s:%s -> %d device(s) by %s", req.model, req.version, len(done), actor)
    shared: dict[Any, Any] = {}  # what every device of the batch looks up, looked up once
    for device_id in done:
        deployer.publisher.publish_desired(session, device_id, shared)
    return refused


def already_desired(session: Session, items: list[tuple[str, DeployRequest]]) -> set[str]:
    """The devices whose desired state in the request's slot already is what the request asks (its version and
    shadow): deploying them again would only add a revision. A rollout step resumed after a crash asks this."""
    if not items:
        return set()
    wanted = {(r.model, r.version) for _, r in items} | {
        (r.shadow_model, r.shadow_version) for _, r in items if r.shadow_model and r.shadow_version is not None
    }
    vid: dict[tuple[str | None, int | None], int | None] = {}
    for model, version in wanted:
        found = select(ModelVersion.id).where(ModelVersion.model == model, ModelVersion.version == version)
        vid[(model, version)] = session.exec(found).first()
    ids = [device_id for device_id, _ in items]
    newest = (
        select(func.max(Deployment.id))
        .where(col(Deployment.device_id).in_(ids))
        .group_by(col(Deployment.device_id), col(Deployment.slot))
    )
    rows = {(x.device_id, x.slot): x for x in session.exec(select(Deployment).where(col(Deployment.id).in_(newest)))}
    out = set()
    for device_id, r in items:
        dep = rows.get((device_id, r.slot))
        shadow = vid.get((r.shadow_model, r.shadow_version)) if r.shadow_model else None
        if dep is not None and dep.version_id == vid[(r.model, r.version)] and dep.shadow_version_id == shadow:
            out.add(device_id)
    return out


def _highest_deployed(
    session: Session, ids: list[str], slot_models: set[tuple[str, str]]
) -> dict[tuple[str, str, str], int]:
    """(device, slot, model) -> the highest version ever deployed there, for these devices, in one query (an
    older version than that is sent as a signed rollback)."""
    out: dict[tuple[str, str, str], int] = {}
    for slot, model in slot_models:
        rows = session.exec(
            select(Deployment.device_id, func.max(ModelVersion.version))
            .join(ModelVersion, col(Deployment.version_id) == col(ModelVersion.id))
            .where(col(Deployment.device_id).in_(ids), Deployment.slot == slot, ModelVersion.model == model)
            .group_by(col(Deployment.device_id))
        ).all()
        out.update({(device_id, slot, model): int(v) for device_id, v in rows if v is not None})
    return out


def _record(
    session: Session, deployer: Deployer, device: Device, req: DeployRequest, actor: str, cache: dict[Any, Any]
) -> tuple[Deployment, bool]:
    """Validate, then add the Deployment row and the device's next revision (not committed). `cache` keeps
    the versions looked up across the devices of one batch."""
    device_id = device.id
    has = device_slots(device)
    if req.slot != "default" and has and req.slot not in has:
        raise DeployError(f"device {device_id} has no slot {req.slot!r} (its slots: {', '.join(has)})", 422)
    key = (req.model, req.version)
    if key not in cache:
        cache[key] = session.exec(
            select(ModelVersion).where(ModelVersion.model == req.model, ModelVersion.version == req.version)
        ).first()
    mv = cache[key]
    if mv is None:
        raise DeployError(f"no model version {req.model}:{req.version}", 404)
    if "highest" in cache:  # looked up for the whole batch at once
        highest = cache["highest"].get((device_id, req.slot, req.model))
    else:
        highest = _highest_deployed(session, [device_id], {(req.slot, req.model)}).get((device_id, req.slot, req.model))
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
    device.desired_revision += 1
    signed = (
        rollback_manifest(mv, deployer.keys, device_id, device.desired_revision) if rollback else mv.signed_manifest
    )
    dep = Deployment(
        device_id=device_id,
        slot=req.slot,
        version_id=int(mv.id or 0),
        revision=device.desired_revision,
        signed_manifest=signed,
        health_window_s=req.health_window_s if req.health_window_s is not None else deployer.default_health_window_s,
        min_fps_ratio=req.min_fps_ratio,
        shadow_version_id=shadow_mv.id if shadow_mv else None,
        shadow_share=req.shadow_share if shadow_mv else None,
        measure_budget_s=req.measure_budget_s,
        sources_json=json.dumps(req.sources) if req.sources is not None else None,
        created_by=actor,
    )
    session.add(device)
    session.add(dep)
    return dep, rollback
