"""A device's model slots: each reports its own model, update state, cameras and telemetry (DeviceSlot rows).

The bridge writes them (`SlotRows`: one query per batch, however many messages name slots); the API, the
console and the rollout engine read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, delete, select

from edge_agent.protocol.messages import ReportedState, Telemetry, UpdateStateName
from fleet_server.devices.tables import Device, DeviceSlot


class SlotRows:
    """The DeviceSlot rows of one bridge batch, fetched once, created where new (added to the session)."""

    def __init__(self, session: Session, device_ids: list[str]) -> None:
        self.session = session
        self._ids = device_ids
        self._rows: dict[tuple[str, str], DeviceSlot] | None = None
        self.single: set[str] = set()  # devices that now report one slot only: their slot rows go

    def flush(self) -> None:
        """Remove the slot rows of devices that serve one slot again (one statement for the batch)."""
        if self.single:
            self.session.exec(delete(DeviceSlot).where(col(DeviceSlot.device_id).in_(sorted(self.single))))

    def get(self, device_id: str, slot: str) -> DeviceSlot:
        if self._rows is None:  # only batches that carry slot reports pay for the query
            found = self.session.exec(select(DeviceSlot).where(col(DeviceSlot.device_id).in_(self._ids))).all()
            self._rows = {(r.device_id, r.slot): r for r in found}
        row = self._rows.get((device_id, slot))
        if row is None:
            row = self._rows[(device_id, slot)] = DeviceSlot(device_id=device_id, slot=slot)
            self.session.add(row)
        return row

    def reported(self, msg: ReportedState, now: datetime) -> None:
        if set(msg.slots) <= {"default"}:  # a one-slot agent: the device row says it all; no slot rows to keep
            self.single.add(msg.device_id)
            return
        self.single.discard(msg.device_id)
        for name, rep in msg.slots.items():
            row = self.get(msg.device_id, name)
            row.model, row.version, row.state = rep.model, rep.version, rep.state
            row.target_version, row.reason, row.target = rep.target_version, rep.reason, rep.target
            row.shadow_version, row.shadow_reason = rep.shadow_version, rep.shadow_reason
            row.sources_json = json.dumps(rep.sources)
            row.updated_at = now

    def telemetry(self, msg: Telemetry, now: datetime) -> None:
        row = self.get(msg.device_id, msg.slot)
        row.fps, row.latency_ms_p95, row.staleness_ms_p99 = msg.fps, msg.latency_ms_p95, msg.staleness_ms_p99
        row.telemetry_json = msg.model_dump_json(by_alias=True, include={"sources", "batch_sizes", "frames"})
        row.updated_at = now


def rows_of(session: Session, device_ids: list[str]) -> dict[str, list[DeviceSlot]]:
    out: dict[str, list[DeviceSlot]] = {}
    if not device_ids:
        return out
    found = session.exec(
        select(DeviceSlot).where(col(DeviceSlot.device_id).in_(device_ids)).order_by(col(DeviceSlot.slot))
    ).all()
    for row in found:
        out.setdefault(row.device_id, []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (r.slot != "default", r.slot))
    return out


def public(row: DeviceSlot, device: Device) -> dict[str, Any]:
    """The slot's shape in the API. The default slot's telemetry lives on the device row (the bridge writes
    only that for it, as before slots), so its figures come from there."""
    mine = row.slot != "default"
    fps, p95, p99 = (
        (row.fps, row.latency_ms_p95, row.staleness_ms_p99)
        if mine
        else (device.fps, device.latency_ms_p95, device.staleness_ms_p99)
    )
    raw = row.telemetry_json if mine else device.telemetry_json
    try:
        tel = json.loads(raw) if raw else {}
    except ValueError:
        tel = {}
    return {
        "slot": row.slot,
        "model": row.model,
        "version": row.version,
        "state": row.state.value if row.state else None,
        "target_version": row.target_version,
        "reason": row.reason,
        "shadow_version": row.shadow_version,
        "shadow_reason": row.shadow_reason,
        "target": row.target,
        "sources": json.loads(row.sources_json or "[]"),
        "fps": fps,
        "latency_ms_p95": p95,
        "staleness_ms_p99": p99,
        "camera_fps": {s["name"]: s.get("infer_fps") for s in tel.get("sources", [])},
    }


def device_slots(device: Device) -> list[str]:
    """The slots the device says it serves (its capabilities); empty for an agent that predates slots."""
    if not device.capabilities_json:
        return []
    try:
        slots = json.loads(device.capabilities_json).get("slots") or []
    except (ValueError, AttributeError):
        return []
    return [s for s in slots if isinstance(s, str)]


@dataclass(frozen=True)
class SlotView:
    """One slot of a device, shaped like the Device columns the rollout engine reads for the default slot."""

    id: str
    online: bool
    model: str | None
    version: int | None
    state: UpdateStateName | None
    target_version: int | None
    reason: str | None
    shadow_version: int | None
    shadow_reason: str | None


def views(session: Session, slot: str, devices: dict[str, Device]) -> dict[str, Any]:
    """Device rows as the engine reads them for a rollout to `slot`: the Device itself for `default`."""
    if slot == "default" or not devices:
        return dict(devices)
    rows = {
        r.device_id: r
        for r in session.exec(
            select(DeviceSlot).where(DeviceSlot.slot == slot, col(DeviceSlot.device_id).in_(list(devices)))
        ).all()
    }
    out: dict[str, Any] = {}
    for device_id, d in devices.items():
        r = rows.get(device_id)
        out[device_id] = SlotView(
            id=device_id,
            online=d.online,
            model=r.model if r else None,
            version=r.version if r else None,
            state=r.state if r else None,
            target_version=r.target_version if r else None,
            reason=r.reason if r else None,
            shadow_version=r.shadow_version if r else None,
            shadow_reason=r.shadow_reason if r else None,
        )
    return out
