"""The audit log: who changed what, newest first."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fleet_server.api.deps import SessionDep, ViewerDep
from fleet_server.audit import entries

router = APIRouter(prefix="/api/v1", tags=["audit"])


@router.get("/audit")
def audit_log(
    session: SessionDep,
    _: ViewerDep,
    actor: str | None = None,
    target: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    rows = entries(session, actor=actor, target_prefix=target, before_id=before_id, limit=limit)
    return [r.model_dump(mode="json") for r in rows]
