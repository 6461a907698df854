"""A drift signal from the fleet's own telemetry: the serving version's mean top confidence over the last
window against its mean before that (the devices' last predictions, kept as telemetry points)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlmodel import Session, col, select

from fleet_server.devices.tables import TelemetryPoint

MIN_PREDICTIONS = 50  # on each side of the comparison


def confidence_drift(
    session: Session, model: str, version: int, window_min: float, now: datetime | None = None
) -> dict[str, Any] | None:
    """{recent, baseline, ratio, recent_n, baseline_n}, or None while either side has too few predictions."""
    now = now or datetime.now(timezone.utc)
    cut = now - timedelta(minutes=window_min)
    sums = {"recent": [0.0, 0], "baseline": [0.0, 0]}
    rows = session.exec(
        select(TelemetryPoint.at, TelemetryPoint.confidences).where(
            TelemetryPoint.model == model, TelemetryPoint.version == version, col(TelemetryPoint.at) <= now
        )
    ).all()
    for at, confs in rows:
        at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
        side = sums["recent" if at >= cut else "baseline"]
        values = json.loads(confs)
        side[0] += sum(values)
        side[1] += len(values)
    (rs, rn), (bs, bn) = sums["recent"], sums["baseline"]
    if rn < MIN_PREDICTIONS or bn < MIN_PREDICTIONS or bs <= 0:
        return None
    recent, baseline = rs / rn, bs / bn
    return {
        "recent": round(recent, 4),
        "baseline": round(baseline, 4),
        "ratio": round(recent / baseline, 4),
        "recent_n": rn,
        "baseline_n": bn,
    }


def retrain_trigger(new_labels: int, min_new_labels: int, drift_drop: float | None, drift: dict | None) -> str | None:
    """Why a policy fires now, or None: enough new labels, or a confidence drop past `drift_drop` with at
    least one new label to learn from (a drift with nothing labelled has nothing to teach)."""
    if new_labels >= min_new_labels:
        return f"{new_labels} new labels (threshold {min_new_labels})"
    if drift_drop and new_labels >= 1 and drift is not None and drift["ratio"] < 1 - drift_drop:
        return (
            f"drift: mean confidence {drift['recent']:.3f} vs {drift['baseline']:.3f} before "
            f"({(1 - drift['ratio']) * 100:.0f}% drop > {drift_drop * 100:.0f}%), {new_labels} new labels"
        )
    return None
