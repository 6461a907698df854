"""The audit log: who changed what, when. `audit()` records a domain action inside the caller's transaction;
the middleware records every state-changing API call by a person or the admin token."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select
from starlette.concurrency import run_in_threadpool

from fleet_server.asgi import StatusRecorder
from fleet_server.db import utcnow

log = logging.getLogger(__name__)


class AuditLog(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=64)
    action: str = Field(max_length=64)
    target: str = Field(max_length=128)
    detail: str | None = None


def audit(session: Session, actor: str, action: str, target: str, detail: str | None = None) -> None:
    """Add an entry to the caller's transaction: it commits with the change it describes, or not at all."""
    session.add(AuditLog(actor=actor, action=action, target=target, detail=detail))


def entries(
    session: Session,
    actor: str | None = None,
    target: str | None = None,
    target_prefix: str | None = None,
    contains: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
    oldest_first: bool = False,
) -> list[AuditLog]:
    """Audit entries, newest first unless asked otherwise, filtered by actor and target."""
    order = col(AuditLog.id).asc() if oldest_first else col(AuditLog.id).desc()
    q = select(AuditLog).order_by(order).limit(max(1, min(limit, 1000)))
    if actor:
        q = q.where(AuditLog.actor == actor)
    if target:
        q = q.where(AuditLog.target == target)
    if target_prefix:
        q = q.where(col(AuditLog.target).startswith(target_prefix))
    if contains:
        q = q.where(col(AuditLog.target).contains(contains))
    if before_id:
        q = q.where(col(AuditLog.id) < before_id)
    return list(session.exec(q).all())


def audit_middleware(app: Any, engine_of: Callable[[], Engine]) -> Any:
    """ASGI middleware: every state-changing API call by a person or the admin token lands in the audit log."""

    async def middleware(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await app(scope, receive, send)
            return
        code = StatusRecorder(send)
        try:
            await app(scope, receive, code)
        finally:
            who = scope.get("state", {}).get("principal")
            if who is not None and who.kind != "device":
                path = scope["path"]

                def write() -> None:
                    with Session(engine_of()) as s:
                        s.add(
                            AuditLog(
                                actor=who.actor[:64],
                                action=f"{scope['method']} {code.status}"[:64],
                                target=path[:128],
                            )
                        )
                        s.commit()

                try:
                    await run_in_threadpool(write)
                except Exception:  # the audit log never turns a done action into an error
                    log.exception("could not write the audit entry for %s", path)

    return middleware
