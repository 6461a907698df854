"""Webhook subscriptions and their outbox of deliveries."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from fleet_server.db import EnumText, utcnow
from fleet_server.strenum import StrEnum

EVENTS = ("rollout.aborted", "device.offline", "drift", "job.failed", "model.registered")


class DeliveryState(StrEnum):
    PENDING = "pending"  # waiting for its first try, or for its next one after a failure
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # every try failed: given up


class Webhook(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=2000)
    events_json: str  # the events it wants, a JSON list from EVENTS
    secret: str = Field(max_length=200)  # signs each body (HMAC-SHA256); never shown again, never logged
    enabled: bool = True
    created_by: str = Field(default="admin", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """One event for one webhook: written in the transaction that made the event, sent by whichever replica
    claims it (a lease), acknowledged only by a 2xx."""

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: int = Field(foreign_key="webhook.id", index=True)
    event: str = Field(max_length=32)
    key: str = Field(max_length=40, index=True)  # the idempotency key the receiver sees, the same on every try
    body: str  # the JSON sent, byte for byte the same on every try
    state: DeliveryState = Field(default=DeliveryState.PENDING, sa_type=EnumText(DeliveryState, 16), index=True)
    attempts: int = 0
    next_at: datetime = Field(default_factory=utcnow, index=True)
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=300)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None
