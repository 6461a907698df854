"""The audit log: who changed what, newest first."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from fleet_server.api.deps import MAX_ID, SessionDep, ViewerDep
from fleet_server.audit import entries

router = APIRouter(prefix="/api/v1", tags=["audit"])


@router.get("/audit")
def audit_log(
    session: SessionDep,
    _: ViewerDep,
    actor: str | None = None,
    target: str | None = None,
    before_id: int | None = Query(None, ge=1, le=MAX_ID),
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    rows = entries(session, actor=actor, target_prefix=target, before_id=before_id, limit=limit)
    return [r.model_dump(mode="json") for r in rows]
