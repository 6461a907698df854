"""The rollout engine: a loop that advances every running rollout one step at a time.

Each step is claimed with a compare-and-set on `Rollout.rev` (UPDATE ... WHERE rev = :seen), so when
several server replicas run the engine against one database, exactly one of them performs a step; the
others see the new rev and skip. Steps are idempotent, so a server killed between claim and effect
resumes the rollout after a restart from what the database says.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import load_only
from sqlmodel import Session, col, select

from edge_agent.protocol.messages import UpdateStateName
from fleet_server.audit import audit
from fleet_server.devices import slots
from fleet_server.devices.deploy import Deployer, DeployError
from fleet_server.devices.tables import DeployRequest, Device
from fleet_server.registry.tables import ModelVersion
from fleet_server.rollouts.gates import Gate, parse_gate
from fleet_server.rollouts.states import (
    ENGINE_STATES,
    FAILED_STATES,
    ROLL_BACK_FROM,
    DeviceEvent,
    DeviceRolloutState,
    RolloutEvent,
    RolloutState,
    next_device_state,
    next_rollout_state,
    sources,
)
from fleet_server.rollouts.tables import Rollout, RolloutDevice, TelemetryAgg
from fleet_server.webhooks import service as webhooks

log = logging.getLogger(__name__)
MIN_SAMPLES = 3  # telemetry messages on the new version before gates are judged
LEASE = timedelta(seconds=30)  # a replica that dies mid-step blocks the rollout at most this long
WAVE_CHUNK = 500  # devices a wave deploys per transaction


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


def _is_shadow_wave(r: Rollout) -> bool:
    return bool(r.shadow) and r.wave == 0


def _wave_name(wave: int) -> str:
    return "canary" if wave == 0 else f"wave {wave}"


def _devices(ids: list[str]) -> Any:
    """The devices' rows with only the columns a rollout reads: a wave of 20,000 reads them every tick."""
    wanted = (
        Device.online, Device.model, Device.version, Device.state, Device.target_version, Device.reason,
        Device.shadow_version, Device.shadow_reason,
    )  # fmt: skip
    return select(Device).where(col(Device.id).in_(ids)).options(load_only(*wanted))  # type: ignore[arg-type]


def agg_dict(a: TelemetryAgg | None) -> dict[str, Any] | None:
    return a.means() if a is not None else None


class RolloutEngine:
    def __init__(self, engine: Engine, deployer: Deployer, interval_s: float = 1.0, name: str = "engine") -> None:
        self.engine, self.deployer, self.interval_s, self.name = engine, deployer, interval_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("rollout engine tick failed")

    def tick(self) -> None:
        with Session(self.engine) as s:
            ids = s.exec(select(Rollout.id).where(col(Rollout.state).in_(ENGINE_STATES))).all()
        for rid in ids:
            self.advance(int(rid or 0))

    # -- one step ----------------------------------------------------------------------------
    def _claim(self, s: Session, r: Rollout) -> bool:
        """Compare-and-set on rev, plus a lease for the duration of the step: one replica at a time."""
        now = _now()
        res = s.execute(
            update(Rollout)
            .where(
                col(Rollout.id) == r.id,
                col(Rollout.rev) == r.rev,
                or_(col(Rollout.lease_until).is_(None), col(Rollout.lease_until) < now),
            )
            .values(rev=r.rev + 1, updated_at=now, lease_owner=self.name, lease_until=now + LEASE)
        )
        s.commit()
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return False
        s.refresh(r)
        return True

    def _release(self, s: Session, rollout_id: int) -> None:
        s.rollback()
        s.execute(
            update(Rollout)
            .where(col(Rollout.id) == rollout_id, col(Rollout.lease_owner) == self.name)
            .values(lease_until=None, lease_owner=None)
        )
        s.commit()

    def _take_device(self, s: Session, d: RolloutDevice, event: DeviceEvent) -> bool:
        """Move one device row on `event` only if no one else moved it first: each device is acted on once."""
        res = s.execute(
            update(RolloutDevice)
            .where(col(RolloutDevice.id) == d.id, col(RolloutDevice.state).in_(sources(event)))
            .values(state=next_device_state(d.state, event), updated_at=_now())
        )
        s.commit()
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return False
        s.refresh(d)
        return True

    def advance(self, rollout_id: int) -> None:
        # expire_on_commit=False: a wave commits once per device; expiring every loaded row each time is O(n^2)
        with Session(self.engine, expire_on_commit=False) as s:
            r = s.get(Rollout, rollout_id)
            if r is None or r.state not in ENGINE_STATES:
                return
            if not self._claim(s, r):
                return
            try:
                self._step(s, r)
            finally:
                self._release(s, rollout_id)

    def _step(self, s: Session, r: Rollout) -> None:
        """One step of a claimed rollout: start its wave, or watch it settle, bake and be judged."""
        if r.state not in ENGINE_STATES:  # re-read after the claim
            return
        self.steps += 1
        actor = f"rollout-engine:{self.name}"
        if r.state == RolloutState.ABORTING:
            self._abort(s, r, r.reason or "aborted", actor)
            return
        rows = list(
            s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id, RolloutDevice.wave == r.wave)).all()
        )
        if r.wave_started_at is None:
            self._start_wave(s, r, rows, actor)
            return
        self._observe(s, r, rows)
        if any(d.state == DeviceRolloutState.DEPLOYING for d in rows):
            s.commit()
            return
        if r.wave_settled_at is None:
            r.wave_settled_at = _now()
            s.add(r)
            s.commit()
        baked = (_now() - (_aware(r.wave_settled_at) or _now())).total_seconds() >= r.bake_s or r.promote
        if baked and self._judge(s, r, rows) is not None:  # None: waiting for telemetry on the new version
            self._close_wave(s, r, rows, actor)

    def _close_wave(self, s: Session, r: Rollout, rows: list[RolloutDevice], actor: str) -> None:
        """The wave is judged: abort past the failure budget, else pass it and start the next or complete."""
        counted = [d for d in rows if d.state != DeviceRolloutState.NOT_UPDATED]
        bad = [d for d in counted if d.state in FAILED_STATES]
        ratio = len(bad) / len(counted) if counted else 0.0
        name = _wave_name(r.wave)
        if rows and not counted:  # nobody was judged: passing would vouch for a version no device has run
            self._abort(s, r, f"{name}: no device was judged ({len(rows)} not updated)", actor)
            return
        if counted and ratio > r.max_failure:
            reasons = "; ".join(f"{d.device_id}: {d.reason}" for d in bad[:5])
            why = f"{name}: {len(bad)}/{len(counted)} device(s) failed (max {r.max_failure:.0%}): {reasons}"
            self._abort(s, r, why, actor)
            return
        ok = len(counted) - len(bad)
        detail = f"{name}: {ok}/{len(counted)} ok, {len(rows) - len(counted)} not updated"
        audit(s, actor, "wave_passed", f"rollout/{r.id}", detail)
        sizes = json.loads(r.waves_json)
        if _is_shadow_wave(r):
            # the candidate agreed in shadow: its canary devices now activate it with the next wave
            for d in rows:
                if d.state == DeviceRolloutState.ACTIVE:
                    d.state, d.wave = next_device_state(d.state, DeviceEvent.SHADOW_PASSED), 1
                    s.add(d)
            if len(sizes) == 1:
                sizes.append(sizes[0])
                r.waves_json = json.dumps(sizes)
        if r.wave + 1 >= len(sizes):
            r.state = next_rollout_state(r.state, RolloutEvent.COMPLETE)
            r.reason = None
            audit(s, actor, "completed", f"rollout/{r.id}")
        else:
            r.wave += 1
            r.wave_started_at = None
            r.wave_settled_at = None
            r.promote = False
        s.add(r)
        s.commit()

    def _start_wave(self, s: Session, r: Rollout, rows: list[RolloutDevice], actor: str) -> None:
        # take every pending device of the wave in one compare-and-set: a device is deployed once
        deploying = next_device_state(DeviceRolloutState.PENDING, DeviceEvent.DEPLOY)
        taken = set(
            s.execute(
                update(RolloutDevice)
                .where(
                    col(RolloutDevice.rollout_id) == r.id,
                    col(RolloutDevice.wave) == r.wave,
                    col(RolloutDevice.state).in_(sources(DeviceEvent.DEPLOY)),
                )
                .values(state=deploying, updated_at=_now())
                .returning(col(RolloutDevice.id))
            )
            .scalars()
            .all()
        )
        s.commit()
        # a start cut short (its replica died after taking the devices, before the wave was marked started) left
        # them deploying: deploy those whose desired state does not say so yet, so that each is deployed once
        cut = [d for d in rows if d.id not in taken and d.state == deploying]
        done = self.deployer.resume(s, [(d.device_id, self._request(r, d)) for d in cut])
        taken |= {d.id for d in cut if d.device_id not in done}
        ids = [d.device_id for d in rows if d.id in taken]
        devices = {x.id: x for x in s.exec(_devices(ids)).all()} if ids else {}
        devices = slots.views(s, r.slot, devices)  # a rollout to another slot reads that slot's report
        aggs = (
            {
                (a.device_id, a.version): a
                for a in s.exec(
                    select(TelemetryAgg).where(col(TelemetryAgg.device_id).in_(ids), TelemetryAgg.model == r.model)
                ).all()
            }
            if ids
            else {}
        )
        todo = [d for d in rows if d.id in taken]
        # in chunks: one transaction and one flush per chunk, never one per device nor one for the whole wave,
        # and the claim renewed after each so that a long wave keeps it
        for i in range(0, len(todo), WAVE_CHUNK):
            chunk, items = todo[i : i + WAVE_CHUNK], []
            for d in chunk:
                d.state = deploying  # the bulk update above may have set it in the session already
                dev = devices.get(d.device_id)
                if dev is not None and d.prev_version is not None and dev.model == r.model:
                    d.baseline_json = json.dumps(agg_dict(aggs.get((d.device_id, d.prev_version))))
                stale = aggs.get((d.device_id, r.version))
                if stale is not None:
                    s.delete(stale)  # judge the new version on fresh telemetry only
                d.updated_at = _now()
                s.add(d)
                items.append((d.device_id, self._request(r, d)))
            refused = self.deployer.deploy_many(s, items, actor)
            for d in chunk:
                if d.device_id in refused:
                    d.state = next_device_state(d.state, DeviceEvent.DEPLOY_REFUSED)
                    d.reason = refused[d.device_id]
                    s.add(d)
            s.commit()
            self._renew(s, r)
        r.wave_started_at = _now()
        s.add(r)
        audit(
            s,
            actor,
            "wave_started",
            f"rollout/{r.id}",
            f"{_wave_name(r.wave)}: {len(rows)} device(s)",
        )
        s.commit()

    def _request(self, r: Rollout, d: RolloutDevice) -> DeployRequest:
        if _is_shadow_wave(r) and d.prev_version is not None:
            return DeployRequest(
                model=r.model,
                version=d.prev_version,
                slot=r.slot,
                shadow_model=r.model,
                shadow_version=r.version,
                shadow_share=r.shadow_share,
            )
        return DeployRequest(model=r.model, version=r.version, slot=r.slot)

    def _renew(self, s: Session, r: Rollout) -> None:
        """Extend this replica's claim on the rollout while a long step runs."""
        s.execute(
            update(Rollout)
            .where(col(Rollout.id) == r.id, col(Rollout.lease_owner) == self.name)
            .values(lease_until=_now() + LEASE)
        )
        s.commit()

    def _observe(self, s: Session, r: Rollout, rows: list[RolloutDevice]) -> None:
        """Move each deploying device on what it reported: committed, failed, or silent past the timeout."""
        started = _aware(r.wave_started_at) or _now()
        timed_out = (_now() - started).total_seconds() > r.offline_timeout_s
        waiting = [d for d in rows if d.state == DeviceRolloutState.DEPLOYING]
        devices = {x.id: x for x in s.exec(_devices([d.device_id for d in waiting])).all()} if waiting else {}
        devices = slots.views(s, r.slot, devices)
        for d in waiting:
            moved = self._device_event(r, d, devices.get(d.device_id), timed_out)
            if moved is None:
                continue
            event, reason = moved
            d.state = next_device_state(d.state, event)
            if reason is not None:
                d.reason = reason
            d.updated_at = _now()
            s.add(d)

    def _device_event(
        self, r: Rollout, d: RolloutDevice, dev: Device | slots.SlotView | None, timed_out: bool
    ) -> tuple[DeviceEvent, str | None] | None:
        """What a deploying device's report means for the rollout, with the reason; None: keep waiting."""
        committed = UpdateStateName.committed
        if dev is None:
            return DeviceEvent.TIMED_OUT, "device deleted"
        if _is_shadow_wave(r) and d.prev_version is not None:
            if dev.version == d.prev_version and dev.shadow_version == r.version and dev.state == committed:
                return DeviceEvent.COMMITTED, None
            if dev.shadow_reason:
                return DeviceEvent.UPDATE_FAILED, f"shadow: {dev.shadow_reason}"
            if timed_out:
                return DeviceEvent.TIMED_OUT, "shadow not started in time"
            return None
        if dev.version == r.version and dev.model == r.model and dev.state == committed:
            return DeviceEvent.COMMITTED, None
        if dev.state == UpdateStateName.failed and dev.target_version == r.version:
            return DeviceEvent.UPDATE_FAILED, dev.reason or "update failed"
        if timed_out:
            silent = "offline: not updated" if not dev.online else f"no activation within {r.offline_timeout_s:g}s"
            return DeviceEvent.TIMED_OUT, silent
        return None

    def _judge(self, s: Session, r: Rollout, rows: list[RolloutDevice]) -> bool | None:
        gates = [parse_gate(g) for g in json.loads(r.gates_json)]
        shadow_wave = _is_shadow_wave(r)
        if shadow_wave:  # the candidate only runs beside the old model: judge its agreement, nothing else
            gates = [g for g in gates if g.metric == "agreement"]
        else:  # agreement exists only while a shadow runs
            gates = [g for g in gates if g.metric != "agreement"]
        settled = _aware(r.wave_settled_at) or _now()
        for d in rows:
            if d.state != DeviceRolloutState.ACTIVE or not gates:
                continue
            if shadow_wave:
                verdict = self._judge_shadow(s, r, d, gates, settled)
                if verdict is None:
                    return None
                continue
            agg = s.get(TelemetryAgg, (d.device_id, r.model, r.version))
            if agg is None or agg.n < MIN_SAMPLES:
                waited = (_now() - settled).total_seconds() - r.bake_s
                if waited < r.offline_timeout_s:
                    return None
                d.state = next_device_state(d.state, DeviceEvent.GATE_FAILED)
                d.reason = "no telemetry on the new version"
                s.add(d)
                continue
            new = agg_dict(agg) or {}
            base = json.loads(d.baseline_json) if d.baseline_json else None
            failed = [text for ok, text in (g.check(new, base) for g in gates) if not ok]
            d.result_json = json.dumps(new)
            if failed:
                d.state, d.reason = next_device_state(d.state, DeviceEvent.GATE_FAILED), "; ".join(failed)
            s.add(d)
        return True

    def _judge_shadow(
        self, s: Session, r: Rollout, d: RolloutDevice, gates: list[Gate], settled: datetime
    ) -> bool | None:
        """Agreement of the shadow candidate over this wave: the active version's sums since the wave began."""
        agg = s.get(TelemetryAgg, (d.device_id, r.model, d.prev_version))
        base = json.loads(d.baseline_json) if d.baseline_json else {}
        base = base or {}
        n = (agg.agree_n if agg else 0) - int(base.get("agree_n") or 0)
        if n < MIN_SAMPLES:
            if (_now() - settled).total_seconds() - r.bake_s < r.offline_timeout_s:
                return None
            d.state, d.reason = next_device_state(d.state, DeviceEvent.GATE_FAILED), "no shadow agreement reported"
            s.add(d)
            return True
        agreement = ((agg.agree_sum if agg else 0.0) - float(base.get("agree_sum") or 0.0)) / n
        failed = [text for ok, text in (g.check({"agreement": agreement}, None) for g in gates) if not ok]
        d.result_json = json.dumps({"agreement": agreement, "frames": n})
        if failed:
            d.state, d.reason = next_device_state(d.state, DeviceEvent.GATE_FAILED), "; ".join(failed)
        s.add(d)
        return True

    def _abort(self, s: Session, r: Rollout, reason: str, actor: str) -> None:
        moved = s.exec(
            select(RolloutDevice).where(RolloutDevice.rollout_id == r.id, col(RolloutDevice.state).in_(ROLL_BACK_FROM))
        ).all()
        for d in moved:
            if not self._take_device(s, d, DeviceEvent.ROLL_BACK):
                continue
            if d.prev_version is None:
                d.reason = (d.reason or "") + " (no previous version to return to)"
                s.add(d)
                continue
            prev = s.get(ModelVersion, d.prev_version_id)
            back = DeployRequest(model=prev.model if prev else r.model, version=d.prev_version, slot=r.slot)
            try:
                self.deployer.deploy(s, d.device_id, back, actor)
            except DeployError as exc:
                d.reason = f"rollback failed: {exc}"
            d.updated_at = _now()
            s.add(d)
        if r.state != RolloutState.ABORTING:  # judged by the engine itself: the same two steps at once
            r.state = next_rollout_state(r.state, RolloutEvent.ABORT)
        r.state, r.reason = next_rollout_state(r.state, RolloutEvent.ABORTED), reason
        s.add(r)
        audit(s, actor, "aborted", f"rollout/{r.id}", f"{reason}; {len(moved)} device(s) sent back")
        webhooks.emit(
            s, "rollout.aborted",
            {"rollout": r.id, "model": r.model, "version": r.version, "reason": reason, "sent_back": len(moved)},
        )  # fmt: skip
        s.commit()
        log.warning("rollout %s aborted: %s", r.id, reason)
