"""What is wrong with a device, in one line: the fleet page's "with a problem", `devices list` and the API.

Telemetry sets `Device.problem` as it arrives (a camera down, fps under half the device's usual); the rest is
read from the row at query time: a failed update, a rejected shadow, an online device gone silent.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from sqlmodel import and_, col, or_

from edge_agent.protocol.messages import Telemetry, UpdateStateName
from fleet_server.devices.tables import Device

SILENT_S = 60.0  # an online device that sent nothing for this long (telemetry comes every few seconds)
SLOW = 0.5  # fps under this share of the device's usual
BASELINE_WEIGHT = 0.05  # each healthy point moves the usual fps this much toward itself


class _Judged(Protocol):
    """What a point's problem is judged on and written to: a Device, or the bridge's plain telemetry row."""

    fps_baseline: float | None
    problem: str | None


def from_telemetry(device: _Judged, msg: Telemetry) -> None:
    """Set the device's telemetry problem and move its usual fps (only healthy points move it)."""
    down = [s for s in msg.sources if not s.ok]
    problem = None
    if msg.source_ok is False or down:
        names = ", ".join(s.name for s in down) or "camera"
        err = msg.source_error or next((s.error for s in down if s.error), None)
        problem = f"{names} down" + (f": {err}" if err else "")
    if msg.runtime_fallback:
        problem = problem or msg.runtime_fallback
    base = device.fps_baseline
    if msg.frames > 0 and base is not None and base > 1.0 and msg.fps < SLOW * base:
        problem = problem or f"{msg.fps:.1f} fps, under half its usual {base:.1f}"
    elif msg.frames > 0 and msg.fps > 0 and problem is None:
        device.fps_baseline = msg.fps if base is None else (1 - BASELINE_WEIGHT) * base + BASELINE_WEIGHT * msg.fps
    device.problem = problem[:300] if problem else None


def describe(d: Device, now: datetime | None = None) -> str | None:
    """The device's problem, or None. Offline devices are counted as offline, not here."""
    if not d.online:
        return None
    if d.state == UpdateStateName.failed:
        return f"update failed: {d.reason}" if d.reason else "update failed"
    if d.problem:
        return d.problem
    if d.reason:
        return f"last update: {d.reason}"
    if d.shadow_reason:
        return f"shadow: {d.shadow_reason}"
    now = now or datetime.now(timezone.utc)
    seen = d.last_seen if d.last_seen is None or d.last_seen.tzinfo else d.last_seen.replace(tzinfo=timezone.utc)
    if seen is not None and (now - seen).total_seconds() > SILENT_S:
        return f"silent for {int((now - seen).total_seconds())} s"
    return None


def where_problem(now: datetime | None = None) -> Any:
    """The same rule in SQL (counts and the fleet filter)."""
    cut = (now or datetime.now(timezone.utc)) - timedelta(seconds=SILENT_S)
    return and_(
        col(Device.online).is_(True),
        or_(
            col(Device.state) == UpdateStateName.failed,
            col(Device.problem).is_not(None),
            col(Device.reason).is_not(None),
            col(Device.shadow_reason).is_not(None),
            col(Device.last_seen) < cut,
        ),
    )
