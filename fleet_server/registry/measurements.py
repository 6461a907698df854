"""The fleet's own benchmark: what devices measured when they installed a version, kept per (version,
target, device) with the device's hardware key, and what a later version of the same model starts from on
that hardware.

A device reports its timings inside its retained reported state (`SlotReport.measured`). Before anything is
kept, the report is checked: the device must have been sent that version, every target must be one of the
version's artifacts, and every figure must be a finite, positive number of milliseconds under a minute. A
report that fails is refused whole, with one log line per (device, version, reason), however often the
retained message comes back.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from typing import Any

from sqlmodel import Session, col, select

from edge_agent.protocol.messages import MeasuredTargets
from fleet_server.db import utcnow
from fleet_server.devices.tables import Deployment
from fleet_server.registry.tables import Artifact, ModelVersion, TargetMeasurement

log = logging.getLogger(__name__)
MAX_MS = 60_000.0
_refused: set[tuple[str, str, int, str]] = set()  # (device, model, version, reason) already logged


class MeasurementRefused(ValueError):
    """A measurement report the server will not keep; str() says why."""


def _check(session: Session, device_id: str, m: MeasuredTargets) -> ModelVersion:
    mv = session.exec(
        select(ModelVersion).where(ModelVersion.model == m.model, ModelVersion.version == m.version)
    ).first()
    if mv is None:
        raise MeasurementRefused(f"no model version {m.model}:{m.version}")
    sent = session.exec(
        select(Deployment.id).where(Deployment.device_id == device_id, Deployment.version_id == mv.id).limit(1)
    ).first()
    if sent is None:
        raise MeasurementRefused(f"{m.model}:{m.version} was never sent to this device")
    targets = set(session.exec(select(Artifact.target).where(Artifact.version_id == mv.id)).all())
    for t in [*(x.target for x in m.timings), m.chosen]:
        if t not in targets:
            raise MeasurementRefused(f"{m.model}:{m.version} has no target {t!r} (it has {', '.join(sorted(targets))})")
    for x in m.timings:
        for name, v in (("p50_ms", x.p50_ms), ("p99_ms", x.p99_ms)):
            if v is not None and not (math.isfinite(v) and 0 < v <= MAX_MS):
                raise MeasurementRefused(f"{x.target} {name} {v!r} is not a latency (0 < ms <= {MAX_MS:g})")
        if x.error is None and x.p50_ms is None:
            raise MeasurementRefused(f"{x.target} has neither a p50 nor an error")
    return mv


def record(session: Session, device_id: str, m: MeasuredTargets) -> bool:
    """Keep a device's measurement (idempotent: the same retained report stored twice changes nothing).
    False, with one log line, when it is refused."""
    try:
        mv = _check(session, device_id, m)
    except MeasurementRefused as exc:
        key = (device_id, m.model, m.version, str(exc))
        if key not in _refused:
            if len(_refused) > 10_000:
                _refused.clear()
            _refused.add(key)
            log.warning("refused the target measurement of %s for %s:%s: %s", device_id, m.model, m.version, exc)
        return False
    rows = {
        r.target: r
        for r in session.exec(
            select(TargetMeasurement).where(
                TargetMeasurement.version_id == mv.id, TargetMeasurement.device_id == device_id
            )
        ).all()
    }
    for x in m.timings:
        row = rows.pop(x.target, None) or TargetMeasurement(
            version_id=int(mv.id or 0), model=mv.model, version=mv.version, target=x.target, device_id=device_id
        )
        new = (m.hardware_key, x.p50_ms, x.p99_ms, x.runs, x.error, x.target == m.chosen)
        if (row.hardware_key, row.p50_ms, row.p99_ms, row.runs, row.error, row.chosen) == new and row.id:
            continue
        row.hardware_key, row.p50_ms, row.p99_ms, row.runs, row.error, row.chosen = new
        row.measured_at = utcnow()
        session.add(row)
    return True


def fleet_rows(session: Session, version_id: int) -> list[dict[str, Any]]:
    """Per (hardware key, target): how many devices measured it, their median p50 and p99, how many chose it."""
    groups: dict[tuple[str, str], list[TargetMeasurement]] = defaultdict(list)
    for r in session.exec(select(TargetMeasurement).where(TargetMeasurement.version_id == version_id)).all():
        groups[(r.hardware_key, r.target)].append(r)
    out = []
    for (hw, target), rows in sorted(groups.items()):
        p50 = [r.p50_ms for r in rows if r.p50_ms is not None]
        p99 = [r.p99_ms for r in rows if r.p99_ms is not None]
        out.append(
            {
                "hardware": hw,
                "target": target,
                "devices": len(rows),
                "p50_ms": round(statistics.median(p50), 3) if p50 else None,
                "p99_ms": round(statistics.median(p99), 3) if p99 else None,
                "failed": sum(1 for r in rows if r.error),
                "error": next((r.error for r in rows if r.error), None),
                "chosen_by": sum(1 for r in rows if r.chosen),
            }
        )
    return out


def preferred_target(
    session: Session, model: str, version: int, hardware_key: str | None, targets: set[str]
) -> tuple[str, str] | None:
    """The target devices of this hardware chose for the newest earlier version of `model` that one of them
    measured, when this version has it: (target, "MODEL:VERSION"). Versions of one model share a lineage
    (fine-tuned or recompiled from each other), so their targets rank alike on the same hardware."""
    if not hardware_key:
        return None
    rows = session.exec(
        select(TargetMeasurement.version, TargetMeasurement.target)
        .where(
            TargetMeasurement.model == model,
            TargetMeasurement.version < version,
            TargetMeasurement.hardware_key == hardware_key,
            col(TargetMeasurement.chosen).is_(True),
        )
        .order_by(col(TargetMeasurement.version).desc())
        .limit(50)
    ).all()
    if not rows:
        return None
    newest = rows[0][0]
    votes: dict[str, int] = defaultdict(int)
    for v, t in rows:
        if v == newest:
            votes[t] += 1
    target = max(votes, key=lambda t: votes[t])
    return (target, f"{model}:{newest}") if target in targets else None
