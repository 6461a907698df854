"""Creating rollouts and acting on them (pause, resume, promote, abort); every action is audited."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from edge_agent.capabilities import device_kind
from edge_agent.protocol.messages import SLOT_PATTERN, Capabilities
from edge_agent.update.checks import TARGET_PREFERENCE
from fleet_server.audit import audit
from fleet_server.devices.slots import device_slots
from fleet_server.devices.slots import views as slot_views
from fleet_server.devices.tables import Device
from fleet_server.registry.tables import Artifact, ModelVersion
from fleet_server.rollouts.gates import DEFAULT_GATES, GateError, parse_gate
from fleet_server.rollouts.selectors import Selector, SelectorError, parse_selector
from fleet_server.rollouts.states import (
    LIVE,
    DeviceRolloutState,
    RolloutEvent,
    TransitionError,
    next_rollout_state,
)
from fleet_server.rollouts.tables import Rollout, RolloutDevice

OPERATOR_ACTIONS = frozenset(
    {RolloutEvent.PAUSE, RolloutEvent.RESUME, RolloutEvent.PROMOTE, RolloutEvent.ABORT, RolloutEvent.ROLLBACK}
)


class RolloutError(Exception):
    def __init__(self, message: str, status: int = 422, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class RolloutCreate(BaseModel):
    model: str = Field(max_length=64)
    version: int = Field(ge=1, le=2**31 - 1)
    selector: str
    slot: str = Field("default", pattern=SLOT_PATTERN, description="The model slot it updates on each device.")
    canary: str = Field("1", description="devices in the canary: a count (5) or a share (2%)")
    waves: list[str] = Field(default_factory=lambda: ["100%"], description="cumulative shares after the canary")
    bake_s: float = Field(600.0, ge=0)
    max_failure: float = Field(0.05, ge=0, le=1, description="failed share of a wave that aborts the rollout")
    gates: list[str] = Field(default_factory=lambda: list(DEFAULT_GATES))
    offline_timeout_s: float = Field(600.0, ge=0)
    skip_incompatible: bool = False
    shadow: bool = Field(False, description="canary runs the new version in shadow first; gate on agreement")
    shadow_share: float = Field(0.2, gt=0, le=1)


def _count(spec: str, total: int) -> int:
    spec = spec.strip()
    try:
        if spec.endswith("%"):
            share = float(spec[:-1]) / 100.0
            if not 0 < share <= 1:
                raise ValueError
            return max(1, math.ceil(share * total))
        n = int(spec)
        if n < 1:
            raise ValueError
        return min(n, total)
    except ValueError:
        raise RolloutError(f"cannot read {spec!r}: use a count (5) or a share (10%)") from None


def wave_sizes(canary: str, waves: list[str], total: int) -> list[int]:
    """Cumulative device counts per wave, canary first; the last wave always covers every device."""
    sizes = [_count(canary, total)]
    for w in waves:
        n = _count(w, total)
        if n > sizes[-1]:
            sizes.append(n)
    if sizes[-1] < total:
        sizes.append(total)
    return sizes


def _device_kind(device: Device) -> str:
    if not device.capabilities_json:
        return "cpu"
    return device_kind(Capabilities.model_validate_json(device.capabilities_json))


def matching_devices(session: Session, selector: Selector) -> list[Device]:
    return [
        d
        for d in session.exec(select(Device).order_by(Device.id)).all()
        if selector.matches(d.id, json.loads(d.tags_json or "{}"))
    ]


def preview(session: Session, selector_text: str) -> dict[str, Any]:
    """How many devices a selector picks (the rollout form shows it as you type)."""
    try:
        selector = parse_selector(selector_text)
    except SelectorError as exc:
        raise RolloutError(str(exc)) from exc
    devices = matching_devices(session, selector)
    return {
        "selector": selector.text,
        "devices": len(devices),
        "online": sum(1 for d in devices if d.online),
        "first": [d.id for d in devices[:10]],
    }


def create_rollout(session: Session, req: RolloutCreate, actor: str) -> tuple[Rollout, list[str]]:
    """Validate everything before writing anything. Returns the rollout and the superseded rollouts' ids."""
    try:
        selector = parse_selector(req.selector)
        gates = [parse_gate(g) for g in req.gates]
    except (SelectorError, GateError) as exc:
        raise RolloutError(str(exc)) from exc
    mv = session.exec(
        select(ModelVersion).where(ModelVersion.model == req.model, ModelVersion.version == req.version)
    ).first()
    if mv is None:
        raise RolloutError(f"no model version {req.model}:{req.version}", 404)
    if any(g.metric == "agreement" for g in gates) and not req.shadow:
        raise RolloutError("an agreement gate needs --shadow: agreement is measured while the candidate runs in shadow")
    devices = matching_devices(session, selector)
    if not devices:
        raise RolloutError(f"selector {req.selector!r} matches no device; nothing was created")
    targets = {a.target for a in session.exec(select(Artifact).where(Artifact.version_id == mv.id)).all()}
    incompatible = [d.id for d in devices if not targets & set(TARGET_PREFERENCE[_device_kind(d)])]
    if incompatible and not req.skip_incompatible:
        raise RolloutError(
            f"{len(incompatible)} device(s) have no artifact of {req.model}:{req.version} for their class: "
            f"{', '.join(incompatible[:20])}; compile for them or pass skip_incompatible",
            detail=incompatible,
        )
    devices = [d for d in devices if d.id not in incompatible]
    if req.slot != "default":  # devices that say which slots they serve and lack this one cannot take it
        devices = [d for d in devices if req.slot in (device_slots(d) or [req.slot])]
        if not devices:
            raise RolloutError(f"no selected device serves slot {req.slot!r}; nothing was created")
    if not devices:
        raise RolloutError("every selected device is incompatible; nothing was created")
    sizes = wave_sizes(req.canary, req.waves, len(devices))
    # supersede: one active rollout per device slot
    superseded: list[str] = []
    ids = [d.id for d in devices]
    active = session.exec(select(Rollout).where(col(Rollout.state).in_(LIVE), Rollout.slot == req.slot)).all()
    for old in active:
        overlap = session.exec(
            select(RolloutDevice.device_id).where(
                RolloutDevice.rollout_id == old.id, col(RolloutDevice.device_id).in_(ids)
            )
        ).first()
        if overlap is not None:
            old.state = next_rollout_state(old.state, RolloutEvent.SUPERSEDE)
            old.reason = f"superseded by a rollout of {req.model}:{req.version}"
            old.rev += 1
            session.add(old)
            superseded.append(str(old.id))
            audit(session, actor, "superseded", f"rollout/{old.id}", old.reason)
    r = Rollout(
        model=req.model,
        version=req.version,
        version_id=int(mv.id or 0),
        slot=req.slot,
        selector=req.selector,
        waves_json=json.dumps(sizes),
        bake_s=req.bake_s,
        max_failure=req.max_failure,
        gates_json=json.dumps([g.text for g in gates]),
        offline_timeout_s=req.offline_timeout_s,
        created_by=actor,
        shadow=req.shadow,
        shadow_share=req.shadow_share,
    )
    session.add(r)
    session.flush()
    # a stable, spread-out order so canaries are not always the alphabetically first devices; online devices
    # first, so that the canary is made of devices that can be judged
    order = sorted(devices, key=lambda d: (not d.online, hashlib.sha256(f"{r.id}:{d.id}".encode()).hexdigest()))
    running = slot_views(session, req.slot, {d.id: d for d in order})  # what each serves in that slot
    for i, d in enumerate(order):
        wave = next(k for k, n in enumerate(sizes) if i < n)
        prev, now = None, running[d.id]
        if now.model == req.model and now.version is not None:
            prev = session.exec(
                select(ModelVersion).where(ModelVersion.model == now.model, ModelVersion.version == now.version)
            ).first()
        session.add(
            RolloutDevice(
                rollout_id=int(r.id or 0),
                device_id=d.id,
                wave=wave,
                prev_version_id=prev.id if prev else None,
                prev_version=now.version if prev else None,
                state=DeviceRolloutState.PENDING,
            )
        )
    audit(
        session,
        actor,
        "created",
        f"rollout/{r.id}",
        f"{req.model}:{req.version} on {len(devices)} device(s), waves {sizes}, gates {[g.text for g in gates]}",
    )
    session.commit()
    session.refresh(r)
    return r, superseded


def act(session: Session, rollout_id: int, action: str, actor: str) -> Rollout:
    """An operator's action (pause, resume, promote, abort, rollback), allowed only where the table says."""
    r = session.get(Rollout, rollout_id)
    if r is None:
        raise RolloutError(f"no rollout {rollout_id}", 404)
    try:
        event = RolloutEvent(action)
    except ValueError:
        raise RolloutError(f"unknown action {action!r}", 400) from None
    if event not in OPERATOR_ACTIONS:
        raise RolloutError(f"unknown action {action!r}", 400)
    try:
        state = next_rollout_state(r.state, event)
    except TransitionError:
        want = "not running" if event == RolloutEvent.PAUSE else "not paused" if event == RolloutEvent.RESUME else ""
        raise RolloutError(f"rollout {rollout_id} is {r.state}{', ' + want if want else ''}", 409) from None
    if event == RolloutEvent.PROMOTE:
        r.promote = True
    elif event in (RolloutEvent.ABORT, RolloutEvent.ROLLBACK):
        r.reason = f"{action} requested by {actor}"
    r.state = state
    r.rev += 1
    r.updated_at = datetime.now(timezone.utc)
    session.add(r)
    audit(session, actor, action, f"rollout/{rollout_id}")
    session.commit()
    session.refresh(r)
    return r


def status(session: Session, r: Rollout) -> dict[str, Any]:
    rows = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)).all()
    sizes = json.loads(r.waves_json)
    waves = []
    for k in range(len(sizes)):
        in_wave = [d for d in rows if d.wave == k]
        counts: dict[str, int] = {}
        for d in in_wave:
            counts[d.state] = counts.get(d.state, 0) + 1
        waves.append(
            {"wave": k, "name": "canary" if k == 0 else f"wave {k}", "devices": len(in_wave), "states": counts}
        )
    return {
        "id": r.id,
        "model": r.model,
        "version": r.version,
        "selector": r.selector,
        "state": r.state,
        "wave": r.wave,
        "waves": waves,
        "bake_s": r.bake_s,
        "max_failure": r.max_failure,
        "gates": json.loads(r.gates_json),
        "shadow": r.shadow,
        "reason": r.reason,
        "created_by": r.created_by,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "devices": [
            {"id": d.device_id, "wave": d.wave, "state": d.state, "reason": d.reason, "prev_version": d.prev_version}
            for d in rows
        ],
    }
