"""Exactly-once telemetry sums per (device, model, version): folded in memory per bridge batch, then one
upsert that adds them to the stored row (several replicas add to the same rows without losing any)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from edge_agent.protocol.messages import Telemetry
from fleet_server.rollouts.tables import SUM_COLUMNS, TelemetryAgg

_UPSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}  # INSERT ... ON CONFLICT, per dialect


def fold(pending: dict[tuple[str, str, int], dict[str, float]], device_id: str, msg: Telemetry) -> None:
    """Add one telemetry message to the batch's sums for (device, model, version)."""
    key = (device_id, msg.model or "", int(msg.version or 0))
    row = pending.setdefault(key, dict.fromkeys(SUM_COLUMNS, 0.0))
    row["n"] += 1
    row["fps_sum"] += msg.fps
    row["p95_sum"] += msg.latency_ms_p95
    row["err_sum"] += msg.errors / max(1, msg.frames + msg.errors)
    row["det_sum"] += float(len(msg.last_prediction))
    if msg.last_prediction:
        row["conf_sum"] += sum(p.score for p in msg.last_prediction) / len(msg.last_prediction)
        row["conf_n"] += 1
    if msg.shadow is not None and msg.shadow.agreement is not None:
        row["agree_sum"] += msg.shadow.agreement
        row["agree_n"] += 1


def upsert_sums(session: Session, pending: dict[tuple[str, str, int], dict[str, float]]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x, one row per (device, model, version)."""
    if not pending:
        return
    now = datetime.now(timezone.utc)
    rows = [
        {
            "device_id": k[0],
            "model": k[1],
            "version": k[2],
            "updated_at": now,
            **{c: (int(v) if c in ("n", "conf_n", "agree_n") else v) for c, v in sums.items()},
        }
        for k, sums in pending.items()
    ]
    table = TelemetryAgg.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert = _UPSERT.get(dialect)
    if insert is None:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise RuntimeError(f"telemetry aggregation needs SQLite or PostgreSQL, not {dialect}")
    stmt: Any = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["device_id", "model", "version"],
        set_={**{c: table.c[c] + stmt.excluded[c] for c in SUM_COLUMNS}, "updated_at": stmt.excluded.updated_at},
    )
    session.execute(stmt, rows)  # executemany of one cached statement
