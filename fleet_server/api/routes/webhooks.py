"""Webhooks (admin): register a URL for events, list them with their delivery counts, remove, see deliveries."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from fleet_server.api.deps import AdminDep, Id, Limit, ServicesDep, SessionDep
from fleet_server.webhooks import service
from fleet_server.webhooks.service import WebhookError
from fleet_server.webhooks.tables import Webhook, WebhookDelivery

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


class WebhookIn(BaseModel):
    url: str = Field(max_length=2000, description="http(s) URL that receives POSTs of signed JSON")
    events: list[str] = Field(description="rollout.aborted, device.offline, drift, job.failed, model.registered")
    secret: str | None = Field(None, max_length=200, description="HMAC key (default: one is made, shown once)")


def _fail(exc: WebhookError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


@router.post("", status_code=status.HTTP_201_CREATED)
def add(body: WebhookIn, session: SessionDep, services: ServicesDep, who: AdminDep) -> dict[str, Any]:
    """Each delivery is POSTed with `X-Edgeloop-Event`, `X-Edgeloop-Delivery` (the idempotency key, the same on
    every retry) and `X-Edgeloop-Signature-256: sha256=HMAC_SHA256(secret, body)`. The secret is returned once."""
    s = services.settings
    try:
        hook, secret = service.add(session, body.url, body.events, body.secret, who.actor, s.base_url, s.port)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {**service.public(session, hook), "secret": secret}


@router.get("")
def list_webhooks(session: SessionDep, _: AdminDep) -> list[dict[str, Any]]:
    hooks = session.exec(select(Webhook).order_by(col(Webhook.id))).all()
    return [service.public(session, h) for h in hooks]


@router.delete("/{hook_id}")
def remove(hook_id: Id, session: SessionDep, who: AdminDep) -> dict[str, Any]:
    try:
        service.remove(session, hook_id, who.actor)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {"id": hook_id, "removed": True}


@router.get("/{hook_id}/deliveries")
def deliveries(hook_id: Id, session: SessionDep, _: AdminDep, limit: Limit = 100) -> list[dict[str, Any]]:
    rows = session.exec(
        select(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == hook_id)
        .order_by(col(WebhookDelivery.id).desc())
        .limit(limit)
    ).all()
    return [service.delivery_public(d) for d in rows]
