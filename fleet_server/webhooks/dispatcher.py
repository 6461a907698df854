"""Sends the outbox: each replica claims due deliveries with a lease (compare-and-set), POSTs the body signed
with HMAC-SHA256 (`X-Edgeloop-Signature-256: sha256=<hex>`, as GitHub signs its webhooks), and marks it
delivered on a 2xx. Anything else is tried again with exponential backoff, up to `max_attempts`; a receiver
that hangs costs one timeout, never the server."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from datetime import datetime, timedelta, timezone

import httpx
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, or_, select

from fleet_server.webhooks.tables import DeliveryState, Webhook, WebhookDelivery

log = logging.getLogger(__name__)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


class WebhookDispatcher:
    def __init__(
        self,
        engine: Engine,
        name: str,
        timeout_s: float = 5.0,
        retry_base_s: float = 2.0,
        max_attempts: int = 12,
        interval_s: float = 1.0,
    ) -> None:
        self.engine, self.name = engine, name
        self.timeout_s, self.retry_base_s, self.max_attempts = timeout_s, retry_base_s, max_attempts
        self.interval_s = interval_s
        self.lease = timedelta(seconds=timeout_s * 3 + 10)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 2)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                while not self._stop.is_set() and self.send_one():
                    pass
            except Exception as exc:  # noqa: BLE001 - a database hiccup: one line, and the next round goes on
                log.error("webhooks: %s: %s", type(exc).__name__, str(exc)[:200])

    def send_one(self) -> bool:
        """Claim and send the next due delivery; False when none is due."""
        now = _now()
        free = or_(col(WebhookDelivery.lease_until).is_(None), col(WebhookDelivery.lease_until) < now)
        with Session(self.engine) as s:
            row = s.exec(
                select(WebhookDelivery)
                .where(WebhookDelivery.state == DeliveryState.PENDING, col(WebhookDelivery.next_at) <= now, free)
                .order_by(col(WebhookDelivery.next_at))
                .limit(1)
            ).first()
            if row is None:
                return False
            claimed = s.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == row.id, col(WebhookDelivery.state) == DeliveryState.PENDING, free)
                .values(lease_owner=self.name, lease_until=now + self.lease)
            )
            s.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return True  # another replica took it
            hook = s.get(Webhook, row.webhook_id)
            delivery_id, event, key, body, attempts = row.id, row.event, row.key, row.body, row.attempts
        status, error = None, None
        if hook is None or not hook.enabled:
            error = "webhook removed"
        else:
            data = body.encode()
            try:
                r = self._http.post(
                    hook.url,
                    content=data,
                    headers={
                        "Content-Type": "application/json",
                        "User-Agent": "edgeloop-webhooks",
                        "X-Edgeloop-Event": event,
                        "X-Edgeloop-Delivery": key,
                        "X-Edgeloop-Signature-256": signature(hook.secret, data),
                    },
                )
                status = r.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
        self._record(int(delivery_id or 0), attempts + 1, status, error, gone=hook is None or not hook.enabled)
        return True

    def _record(self, delivery_id: int, attempts: int, status: int | None, error: str | None, gone: bool) -> None:
        values: dict = {"attempts": attempts, "last_status": status, "last_error": error, "lease_owner": None,
                        "lease_until": None}  # fmt: skip
        if error is None:
            values.update(state=DeliveryState.DELIVERED, delivered_at=_now())
        elif gone or attempts >= self.max_attempts:
            values.update(state=DeliveryState.FAILED)
            log.warning("webhook delivery %d given up after %d tries: %s", delivery_id, attempts, error)
        else:
            delay = min(3600.0, self.retry_base_s * 2 ** (attempts - 1))
            values.update(next_at=_now() + timedelta(seconds=delay))
            log.info("webhook delivery %d failed (%s); try %d in %.1f s", delivery_id, error, attempts + 1, delay)
        with Session(self.engine) as s:
            s.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.lease_owner) == self.name)
                .values(**values)
            )
            s.commit()
