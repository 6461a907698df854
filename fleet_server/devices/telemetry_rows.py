"""A telemetry batch's device columns without ORM objects.

Telemetry is most of what a fleet sends. The bridge used to load each device of a telemetry batch as an ORM
object and let the unit of work find what changed. Here the few columns a point reads are read as plain rows,
the point is applied to them, and what changed is written back by primary key, one executemany per set of
changed columns. Only the columns that changed are written, so a concurrent status from another replica is
not overwritten with what this batch read.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, update
from sqlmodel import Session, col, delete, select

from edge_agent.protocol.messages import Telemetry
from fleet_server.devices import problems
from fleet_server.devices.slots import SlotRows
from fleet_server.devices.tables import Device, TelemetryPoint
from fleet_server.rollouts.sums import fold, upsert_sums

_WRITTEN = ("last_seen", "online", "fps", "latency_ms_p95", "staleness_ms_p99", "problem", "fps_baseline")


class TelemetryRow:
    """The columns a telemetry point reads and writes, as plain attributes."""

    __slots__ = ("id", "loaded", "last_seen", "online", "fps", "latency_ms_p95", "staleness_ms_p99", "problem",
                 "fps_baseline", "telemetry_json")  # fmt: skip

    def __init__(self, device_id: str, online: bool, fps_baseline: float | None, problem: str | None) -> None:
        self.id, self.online, self.fps_baseline, self.problem = device_id, online, fps_baseline, problem
        self.loaded: dict[str, Any] = {"online": online, "fps_baseline": fps_baseline, "problem": problem}
        self.last_seen: datetime | None = None
        self.fps = self.latency_ms_p95 = self.staleness_ms_p99 = None  # type: float | None
        self.telemetry_json: str | None = None

    def changes(self) -> dict[str, Any]:
        if self.last_seen is None:  # no point of this batch reached it
            return {}
        out = {k: getattr(self, k) for k in _WRITTEN if k not in self.loaded or getattr(self, k) != self.loaded[k]}
        if "fps" in out and out["fps"] is None:  # no default-slot point: its columns are not this batch's
            out = {k: v for k, v in out.items() if k not in ("fps", "latency_ms_p95", "staleness_ms_p99")}
        if self.telemetry_json is not None:
            out["telemetry_json"] = self.telemetry_json
        return out


def load(session: Session, ids: list[str]) -> dict[str, TelemetryRow]:
    query = select(Device.id, Device.online, Device.fps_baseline, Device.problem).where(col(Device.id).in_(ids))
    return {r[0]: TelemetryRow(*r) for r in session.exec(query).all()}


def apply_point(
    device: Device | TelemetryRow,
    msg: Telemetry,
    now: datetime,
    online: bool,
    pending: dict[tuple[str, str, int], dict[str, float]],
    slots: SlotRows,
) -> None:
    """One point onto its device (an ORM row or a TelemetryRow). `online`: False for a point older than the
    device's last status (an `offline` applied first must not be undone by it)."""
    device.last_seen = now
    if online:
        device.online = True
    if msg.slot != "default":  # another slot's model: its own row; the device's columns are the default's
        slots.telemetry(msg, now)
    else:
        device.fps, device.latency_ms_p95 = msg.fps, msg.latency_ms_p95
        device.staleness_ms_p99 = msg.staleness_ms_p99
        problems.from_telemetry(device, msg)
    if msg.model and msg.version is not None and msg.frames > 0:
        fold(pending, device.id, msg)


def write(session: Session, rows: list[TelemetryRow]) -> None:
    """What changed, by primary key: one executemany per set of changed columns."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        changed = row.changes()
        if changed:
            groups[tuple(sorted(changed))].append({"id": row.id, **changed})
    table: Any = Device.__table__  # type: ignore[attr-defined]  # Core, not the ORM's bulk update: no per-row mapper work
    for keys, params in groups.items():
        stmt = update(table).where(table.c.id == bindparam("b_id")).values({k: bindparam(f"b_{k}") for k in keys})
        session.execute(stmt, [{f"b_{k}": v for k, v in p.items()} for p in params])


class History:
    """The telemetry history: one point per device per `every_s` (per replica: with N replicas a device gets up
    to N), and points older than `retention_h` pruned every ten minutes."""

    def __init__(self, every_s: float, retention_h: float) -> None:
        self.every_s, self.retention_h = every_s, retention_h
        self._last: dict[str, float] = {}  # device -> monotonic time of its last point
        self._last_prune = 0.0

    def add(self, session: Session, device_id: str, msg: Telemetry, now: datetime) -> None:
        mono = time.monotonic()
        if mono - self._last.get(device_id, -1e18) < self.every_s:
            return
        self._last[device_id] = mono
        session.add(
            TelemetryPoint(
                device_id=device_id,
                at=now,
                model=msg.model,
                version=msg.version,
                fps=msg.fps,
                latency_ms_p95=msg.latency_ms_p95,
                staleness_ms_p99=msg.staleness_ms_p99,
                frames=msg.frames,
                dropped=msg.dropped,
                errors=msg.errors,
                confidences=json.dumps([round(p.score, 3) for p in msg.last_prediction]),
            )
        )
        if mono - self._last_prune > 600:
            self._last_prune = mono
            cutoff = now - timedelta(hours=self.retention_h)
            session.exec(delete(TelemetryPoint).where(col(TelemetryPoint.at) < cutoff))


class _SlotPoints:
    """Points of a device's other slots, kept until the buffer is written (they have rows of their own)."""

    def __init__(self) -> None:
        self.points: list[tuple[Telemetry, datetime]] = []

    def telemetry(self, msg: Telemetry, now: datetime) -> None:
        self.points.append((msg, now))


class TelemetryBuffer:
    """Telemetry between commits: each device's newest point and its sums folded in memory, written in one
    transaction at most every `every_s` (or as soon as no telemetry waits). Under load a device that sends
    four points a second costs one row update a second, not four. Telemetry is QoS 0: what a crash loses here
    is at most `every_s` of points, never a state message (those have their own path)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.rows: dict[str, TelemetryRow] = {}
        self.seqs: dict[str, int] = {}  # device -> arrival seq of its newest buffered point
        self.last: dict[str, Telemetry] = {}  # device -> its newest default-slot point
        self.pending: dict[tuple[str, str, int], dict[str, float]] = {}
        self.slots = _SlotPoints()
        self.since: float | None = None

    def due(self) -> bool:
        return self.since is not None and time.monotonic() - self.since >= self.every_s

    def add(self, device_id: str, seq: int, msg: Telemetry, now: datetime, online: bool) -> bool:
        """False: the device has no row (not enrolled)."""
        row = self.rows.get(device_id)
        if row is None:
            return False
        if self.since is None:
            self.since = time.monotonic()
        apply_point(row, msg, now, online, self.pending, self.slots)  # type: ignore[arg-type]
        self.seqs[device_id] = seq
        if msg.slot == "default":
            self.last[device_id] = msg
        return True

    def write(self, session: Session, history: History, status_seq: dict[str, int]) -> int:
        """Everything buffered, in `session` (the caller commits). Returns the devices written."""
        now = datetime.now(timezone.utc)
        slots = SlotRows(session, sorted({m.device_id for m, _ in self.slots.points}))
        for msg, at in self.slots.points:
            slots.telemetry(msg, at)
        for device_id, msg in self.last.items():
            self.rows[device_id].telemetry_json = msg.model_dump_json(by_alias=True)
            history.add(session, device_id, msg, now)
        for device_id, row in self.rows.items():
            if status_seq.get(device_id, -1) > self.seqs.get(device_id, -1):
                row.online = row.loaded["online"]  # a status came after these points: theirs is not the word
        write(session, list(self.rows.values()))
        upsert_sums(session, self.pending)
        slots.flush()
        return len(self.seqs)

    def clear(self) -> None:
        self.__init__(self.every_s)  # type: ignore[misc]
