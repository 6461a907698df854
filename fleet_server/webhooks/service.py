"""Registering webhooks, and `emit`: the outbox rows for an event, in the caller's transaction."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet_server.audit import audit
from fleet_server.webhooks.tables import EVENTS, DeliveryState, Webhook, WebhookDelivery

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "[::1]")


class WebhookError(Exception):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def check_url(url: str, server_url: str, server_port: int) -> str:
    """http(s) only, with a host, and never this server itself (a loop of events into its own API)."""
    u = urlparse(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise WebhookError(f"a webhook URL must be http:// or https:// with a host, not {url[:100]!r}")
    own = urlparse(server_url)
    port = u.port or (443 if u.scheme == "https" else 80)
    own_port = own.port or (443 if own.scheme == "https" else 80)
    if (u.hostname == own.hostname and port == own_port) or (u.hostname in LOCAL_NAMES and port == server_port):
        raise WebhookError("a webhook cannot point at this server itself")
    return url.strip()


def add(
    session: Session, url: str, events: list[str], secret: str | None, actor: str, server_url: str, server_port: int
) -> tuple[Webhook, str]:
    unknown = sorted(set(events) - set(EVENTS))
    if not events or unknown:
        raise WebhookError(f"unknown events {unknown}; choose from {', '.join(EVENTS)}" if unknown else "no events")
    if secret is not None and len(secret) < 16:
        raise WebhookError("a webhook secret needs at least 16 characters (or leave it out: one is made)")
    secret = secret or secrets.token_urlsafe(32)
    hook = Webhook(url=check_url(url, server_url, server_port), events_json=json.dumps(sorted(set(events))),
                   secret=secret, created_by=actor)  # fmt: skip
    session.add(hook)
    session.flush()
    audit(session, actor, "webhook.added", f"webhook/{hook.id}", f"{hook.url} {hook.events_json}")  # no secret
    session.commit()
    session.refresh(hook)
    return hook, secret


def remove(session: Session, hook_id: int, actor: str) -> None:
    hook = session.get(Webhook, hook_id)
    if hook is None:
        raise WebhookError(f"no webhook {hook_id}", 404)
    hook.enabled = False  # its deliveries stay as history; nothing new is queued or sent for it
    session.add(hook)
    audit(session, actor, "webhook.removed", f"webhook/{hook_id}", hook.url)
    session.commit()


def public(session: Session, hook: Webhook) -> dict[str, Any]:
    counts = dict(
        session.exec(
            select(WebhookDelivery.state, func.count())
            .where(WebhookDelivery.webhook_id == hook.id)
            .group_by(WebhookDelivery.state)
        ).all()
    )
    return {
        "id": hook.id,
        "url": hook.url,
        "events": json.loads(hook.events_json),
        "enabled": hook.enabled,
        "created_by": hook.created_by,
        "created_at": hook.created_at,
        "deliveries": {str(s): int(counts.get(s, 0)) for s in DeliveryState},
    }


def delivery_public(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "event": d.event,
        "key": d.key,
        "state": str(d.state),
        "attempts": d.attempts,
        "next_at": d.next_at,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": d.created_at,
        "delivered_at": d.delivered_at,
    }


def emit(session: Session, event: str, data: dict[str, Any]) -> int:
    """Queue `event` for every enabled webhook that wants it, in the caller's transaction (committed with the
    change that made the event, or not at all). Returns how many deliveries were queued."""
    assert event in EVENTS, event
    hooks = session.exec(select(Webhook).where(col(Webhook.enabled).is_(True))).all()
    n = 0
    for hook in hooks:
        if event not in json.loads(hook.events_json):
            continue
        key = str(uuid.uuid4())
        body = json.dumps(
            {"event": event, "id": key, "at": datetime.now(timezone.utc).isoformat(), "data": data},
            sort_keys=True,
            default=str,
        )
        session.add(WebhookDelivery(webhook_id=int(hook.id or 0), event=event, key=key, body=body))
        n += 1
    return n
