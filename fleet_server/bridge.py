"""MQTT bridge: publishes retained desired state; consumes reported / status / telemetry.

Device traffic is consumed through `$share/edgeloop/...` so several server replicas split it. The
paho network thread only enqueues; one worker thread applies messages to the database (see MqttBridge).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from edge_agent.protocol.messages import (
    ReportedState,
    StatusMessage,
    Telemetry,
    decode_message,
    encode_message,
)
from edge_agent.protocol.topics import DeviceTopics, fleet_filter, parse_device_topic
from edge_agent.transport.mqtt import Ack, MqttTransport
from fleet_server.devices import telemetry_rows
from fleet_server.devices.desired import desired_message
from fleet_server.devices.slots import SlotRows
from fleet_server.devices.tables import Deployment, Device
from fleet_server.registry import measurements
from fleet_server.rollouts.sums import upsert_sums
from fleet_server.webhooks import service as webhooks

log = logging.getLogger(__name__)
_MODELS = {"reported": ReportedState, "status": StatusMessage, "telemetry": Telemetry}


BATCH = 500


class _Item(NamedTuple):
    seq: int  # arrival order at this replica
    device_id: str
    kind: str
    payload: bytes
    ack: Ack
    at: float  # monotonic time it arrived


def _report_order(msg: ReportedState, item: _Item) -> tuple[int, int]:
    return (msg.seq, item.seq)


def _newest_reports(decoded: list[tuple[_Item, Any]]) -> tuple[list[tuple[_Item, Any]], list[_Item]]:
    """A device's `reported` is its whole state: of several in one batch only its newest is applied (a
    rollout sends about seven per device), by the agent's own numbering, since the broker may deliver two
    reports out of order; arrival decides between different agent processes. Returns (to apply, superseded:
    acknowledged with the batch)."""
    best: dict[str, tuple[_Item, ReportedState]] = {}
    for item, msg in decoded:
        if isinstance(msg, ReportedState):
            have = best.get(item.device_id)
            if have is None or (
                _report_order(msg, item) > _report_order(have[1], have[0]) if msg.boot == have[1].boot else True
            ):
                best[item.device_id] = (item, msg)
    if len(best) == sum(isinstance(m, ReportedState) for _, m in decoded):
        return decoded, []
    keep = {id(best[d][0]) for d in best}
    applied = [(i, m) for i, m in decoded if not isinstance(m, ReportedState) or id(i) in keep]
    return applied, [i for i, m in decoded if isinstance(m, ReportedState) and id(i) not in keep]


def _retryable(exc: BaseException) -> bool:
    """The database is away or busy (locked, restarting, connection lost): try the same messages again later."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
    )


class MqttBridge:
    """Two paths in. State messages (`reported`, `status`) are never dropped: they wait in an unbounded queue
    (the broker's in-flight window bounds it) and are acknowledged to the broker only after their transaction
    commits, so a replica that dies mid-batch gets them again. Telemetry is QoS 0 and may be shed when its
    bounded queue is full: the oldest point goes, counted per device, and the newest wins. The worker takes
    state messages first, so a telemetry flood delays them by at most one telemetry batch."""

    def __init__(
        self,
        engine: Engine,
        url: str,
        shared: bool,
        queue_size: int = 10000,
        history_s: float = 30.0,
        retention_h: float = 24.0,
        client_id: str | None = None,
        keepalive_s: int = 30,
    ) -> None:
        self.engine = engine
        self.history = telemetry_rows.History(history_s, retention_h)
        self.buffer = telemetry_rows.TelemetryBuffer()
        self.shared = shared
        self.persistent = client_id is not None
        self.transport = MqttTransport(
            url,
            client_id=client_id or f"edgeloop-server-{uuid.uuid4().hex[:8]}",
            clean_session=not self.persistent,  # a stable id keeps the session: unacked messages come back
            on_connected=self.republish_all,
            manual_ack=True,
            keepalive=keepalive_s,
        )
        self._state: queue.Queue[_Item] = queue.Queue()
        self._telemetry: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._retry: list[_Item] = []  # a state batch the database could not take yet, first in line
        self._wake = threading.Event()
        self._seq = itertools.count()
        self._unacked = 0  # state messages received and not yet acknowledged
        self._count_lock = threading.Lock()
        self._status_seq: dict[str, int] = {}  # device -> arrival order of its last applied status
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self.rejected = 0  # device messages refused (malformed, hostile, wrong device)
        self.shed: Counter[str] = Counter()  # telemetry points shed under overload, per device
        self.shed_count = 0
        self.applied = 0
        self.superseded = 0  # `reported` messages a newer one of the same device in the same batch replaced
        self.stale = 0  # `reported` messages older than one already applied (delivered late), not applied
        self.errors = 0  # unexpected errors the worker survived
        self.db_retries = 0  # state batches tried again because the database was away
        self.restarts = 0  # times the watchdog had to start a new worker

    def start(self) -> None:
        for kind in _MODELS:
            self.transport.subscribe_acked(fleet_filter(kind, shared=self.shared), self._on_message, qos=1)
        self._start_worker()
        self._watchdog = threading.Thread(target=self._watch, name="bridge-watchdog", daemon=True)
        self._watchdog.start()
        self.transport.start()

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._work, name="bridge-worker", daemon=True)
        self._worker.start()

    def _watch(self) -> None:
        """The worker survives any error from what it reads; should it die anyway, start another."""
        while not self._stop.wait(1.0):
            if not self.worker_alive:
                self.restarts += 1
                log.error("bridge worker died; starting a new one (restart %d)", self.restarts)
                self._start_worker()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in (self._watchdog, self._worker):
            if t is not None:
                t.join(5)
        self.transport.stop()  # after the worker: what it stored is acknowledged first

    @property
    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def lag_s(self) -> float:
        """Age of the oldest message still waiting to be stored (0 when none waits)."""
        now, oldest = time.monotonic(), None
        for q in (self._retry, self._state.queue, self._telemetry.queue):
            try:
                at = q[0].at
            except IndexError:
                continue
            oldest = at if oldest is None else min(oldest, at)
        return 0.0 if oldest is None else round(now - oldest, 3)

    def health(self) -> dict[str, Any]:
        """ok only while device messages can flow: the worker runs and the broker takes the connection."""
        connected = bool(self.transport.connected)
        return {
            "ok": self.worker_alive and connected,
            "mqtt_connected": connected,
            "worker_alive": self.worker_alive,
            "persistent_session": self.persistent,
            "applied": self.applied,
            "superseded": self.superseded,
            "stale": self.stale,
            "rejected": self.rejected,
            "telemetry_shed": self.shed_count,
            "errors": self.errors,
            "db_retries": self.db_retries,
            "restarts": self.restarts,
            "queued_state": self._state.qsize() + len(self._retry),
            "unacked_state": self._unacked,
            "queued_telemetry": self._telemetry.qsize(),
            "lag_s": self.lag_s(),
        }

    def wait_connected(self, timeout: float) -> bool:
        return self.transport.wait_connected(timeout)

    # -- desired state -----------------------------------------------------------------------
    def publish_desired(self, session: Session, device_id: str, cache: dict[Any, Any] | None = None) -> None:
        msg = desired_message(session, device_id, cache)
        if msg is None:
            return
        # waits for room in the outgoing queue rather than drop a desired state: a wave publishes thousands
        self.transport.publish(DeviceTopics(device_id).desired, encode_message(msg), qos=1, retain=True, wait_s=30)

    def clear_desired(self, device_id: str) -> None:
        """An empty retained message removes the device's retained desired state from the broker."""
        self.transport.publish(DeviceTopics(device_id).desired, b"", qos=1, retain=True)

    def republish_all(self) -> None:
        """On (re)connect: the database is the source of truth for every retained desired state."""
        with Session(self.engine) as session:
            ids = sorted(set(session.exec(select(Deployment.device_id)).all()))
            shared: dict[Any, Any] = {}
            for device_id in ids:
                self.publish_desired(session, device_id, shared)
        log.info("re-published desired state for %d device(s)", len(ids))

    # -- device traffic (paho's network thread: enqueue only) ---------------------------------
    def _on_message(self, topic: str, payload: bytes, ack: Ack) -> None:
        parsed = parse_device_topic(topic)
        if parsed is None:
            ack()
            return
        if parsed[1] != "telemetry":
            with self._count_lock:
                self._unacked += 1
            self._state.put(_Item(next(self._seq), parsed[0], parsed[1], payload, self._counted(ack), time.monotonic()))
            self._wake.set()
            return
        ack()  # telemetry is QoS 0: nothing to acknowledge, nothing re-delivered
        item = _Item(next(self._seq), parsed[0], parsed[1], payload, ack, time.monotonic())
        while True:
            try:
                self._telemetry.put_nowait(item)
                break
            except queue.Full:
                try:  # the oldest point goes: the newest wins
                    old = self._telemetry.get_nowait()
                except queue.Empty:
                    continue
                self.shed[old.device_id] += 1
                self.shed_count += 1
                if self.shed_count % 1000 == 1:
                    log.warning("bridge overloaded: shed %d telemetry point(s) so far", self.shed_count)
        self._wake.set()

    def _counted(self, ack: Ack) -> Ack:
        def done() -> None:
            with self._count_lock:
                self._unacked -= 1
            ack()

        return done

    # -- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        """State messages first, then one telemetry batch, each in one transaction of up to BATCH messages.
        Nothing a device sends ends this loop: every error is logged in one line, counted, and it goes on."""
        while not self._stop.is_set():
            try:
                if not self._drain_once():
                    self._wake.wait(0.25)
            except Exception as exc:  # noqa: BLE001 - the fleet's ingestion outlives any one bad batch
                self.errors += 1
                log.error("bridge worker: %s: %s", type(exc).__name__, str(exc)[:200])
        self._write_telemetry()  # what is buffered, before the server stops

    def _take(self, q: queue.Queue[_Item], batch: list[_Item]) -> list[_Item]:
        while len(batch) < BATCH:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _drain_once(self) -> bool:
        """One state batch if any waits, else one telemetry batch; False when there was nothing to do."""
        self._wake.clear()
        retry, self._retry = self._retry, []
        state = self._take(self._state, retry)
        if state:
            self._store(state, state=True)
            return True
        telemetry = self._take(self._telemetry, [])
        if telemetry:
            self._store(telemetry, state=False)
            return True
        return False

    def _store(self, batch: list[_Item], state: bool) -> None:
        decoded: list[tuple[_Item, Any]] = []
        for item in batch:
            try:
                model: Any = _MODELS[item.kind]
                decoded.append((item, decode_message(item.payload, model, expect_device=item.device_id)))
            except Exception as exc:  # noqa: BLE001 - MessageError, or anything else a hostile payload causes
                self.rejected += 1
                item.ack()
                log.warning("ignored %s from %s: %s", item.kind, item.device_id, str(exc)[:200])
        if not decoded:
            return
        decoded, old = _newest_reports(decoded)
        try:
            self._apply_batch(decoded)
            self.applied += len(decoded)
            self.superseded += len(old)
        except Exception as exc:  # noqa: BLE001 - sorted out below
            if state and _retryable(exc):  # nothing acknowledged: try again, first in line
                self.db_retries += 1
                if self.db_retries % 20 == 1:
                    log.error("database unavailable (%s); %d state message(s) wait", str(exc)[:200], len(decoded))
                self._retry = [item for item, _ in decoded] + old + self._retry
                self._stop.wait(min(2.0, 0.1 * len(self._retry) ** 0.5))
                return
            log.error("could not store a batch of %d device message(s) (%s); applying one by one", len(decoded), exc)
            for one in decoded:
                try:
                    self._apply_batch([one])
                    self.applied += 1
                except Exception as err:  # noqa: BLE001 - one poison message must not hold the others
                    self.errors += 1
                    log.error("could not store %s from %s: %s", one[0].kind, one[0].device_id, str(err)[:200])
                one[0].ack()
            for item in old:
                item.ack()
            return
        for item in [*(item for item, _ in decoded), *old]:
            item.ack()

    def _apply_batch(self, items: list[tuple[_Item, Any]]) -> None:
        """One transaction; devices and aggregates fetched in two queries; no flush until the commit."""
        ids = sorted({item.device_id for item, _ in items})
        if all(isinstance(msg, Telemetry) for _, msg in items):
            self._apply_telemetry(items, ids)
            return
        with Session(self.engine) as session, session.no_autoflush:
            # the wide text columns are written here, never read: not loading them halves the query's cost
            wide = (Device.telemetry_json, Device.capabilities_json, Device.mining_json, Device.tags_json)
            query = select(Device).where(col(Device.id).in_(ids)).options(*(defer(c) for c in wide))  # type: ignore[arg-type]
            if any(isinstance(msg, ReportedState) for _, msg in items):
                # another replica may apply a newer report of the same device at the same moment: lock the rows
                # (in id order, so two replicas never deadlock) so that the seq check reads what it committed
                query = query.order_by(col(Device.id)).with_for_update()
            devices = {d.id: d for d in session.exec(query).all()}
            pending: dict[tuple[str, str, int], dict[str, float]] = {}
            slots = SlotRows(session, ids)
            last_telemetry: dict[str, Telemetry] = {}
            now = datetime.now(timezone.utc)
            for item, msg in items:
                device = devices.get(item.device_id)
                if device is None:
                    log.warning("ignored %s from unenrolled device %s", item.kind, item.device_id)
                    continue
                if isinstance(msg, StatusMessage):
                    self._status_seq[item.device_id] = item.seq
                self._apply_one(
                    session, pending, slots, device, msg, now, item.seq >= self._status_seq.get(item.device_id, -1)
                )
                if isinstance(msg, Telemetry) and msg.slot == "default":
                    last_telemetry[item.device_id] = msg
            for device_id, msg in last_telemetry.items():
                devices[device_id].telemetry_json = msg.model_dump_json(by_alias=True)
                self.history.add(session, device_id, msg, now)
            upsert_sums(session, pending)
            slots.flush()
            session.commit()

    def _apply_telemetry(self, items: list[tuple[_Item, Any]], ids: list[str]) -> None:
        """A batch of telemetry only (most of what a fleet sends): into the buffer, written at most each second
        (at once when no more telemetry waits), in the transaction that read the batch's new devices."""
        buf = self.buffer
        with Session(self.engine) as session, session.no_autoflush:
            missing = [i for i in ids if i not in buf.rows]
            if missing:
                buf.rows.update(telemetry_rows.load(session, missing))
            now = datetime.now(timezone.utc)
            for item, msg in items:
                online = item.seq >= self._status_seq.get(item.device_id, -1)
                if not buf.add(item.device_id, item.seq, msg, now, online):
                    log.warning("ignored telemetry from unenrolled device %s", item.device_id)
            if buf.due() or self._telemetry.empty():
                self._write_telemetry(session)

    def _write_telemetry(self, session: Session | None = None) -> None:
        """The buffer in one transaction. If it cannot be written the points go (telemetry may be shed), said
        in one line; the next points start a new buffer."""
        if self.buffer.since is None:
            return
        try:
            with session or Session(self.engine) as s, s.no_autoflush:
                self.buffer.write(s, self.history, self._status_seq)
                s.commit()
        except Exception as exc:  # noqa: BLE001 - telemetry is sheddable; the bridge lives on
            self.errors += 1
            log.error("could not store buffered telemetry of %d device(s): %s", len(self.buffer.seqs), str(exc)[:200])
        finally:
            self.buffer.clear()

    def _apply_one(
        self,
        session: Session,
        pending: dict[tuple[str, str, int], dict[str, float]],
        slots: SlotRows,
        device: Device,
        msg: object,
        now: datetime,
        online: bool = True,
    ) -> None:
        """`online`: False for telemetry that arrived before the device's last status (an `offline` status,
        applied first because state messages go first, must not be undone by an older point)."""
        device.last_seen = now
        if isinstance(msg, StatusMessage):
            if device.online and msg.status == "offline":
                gone = {"device": device.id, "model": device.model, "version": device.version, "at": now}
                webhooks.emit(session, "device.offline", gone)
            device.online = msg.status == "online"
        elif isinstance(msg, ReportedState):  # retained: may be old, so it says nothing about online
            if msg.boot and msg.boot == device.reported_boot and msg.seq <= (device.reported_seq or 0):
                self.stale += 1  # delivered late: the device has reported since
                return
            device.reported_boot, device.reported_seq = msg.boot, msg.seq
            slot = msg.slots.get("default")
            if slot is not None:
                device.model, device.version = slot.model, slot.version
                device.state, device.reason = slot.state, slot.reason
                device.target_version = slot.target_version
                device.shadow_version, device.shadow_reason = slot.shadow_version, slot.shadow_reason
                device.target, device.detail, got = slot.target, slot.detail, slot.measured
                stored = got is not None and measurements.record(session, device.id, got)
                if stored and got is not None and (got.model, got.version) == (slot.model, slot.version):
                    device.target_reason = got.reason
            slots.reported(msg, now)
            device.reported_revision = msg.revision
            if msg.capabilities is not None:
                device.capabilities_json = msg.capabilities.model_dump_json()
        elif isinstance(msg, Telemetry):
            telemetry_rows.apply_point(device, msg, now, online, pending, slots)
