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
from sqlmodel import Session, col, select

from fleet_server.deploy import DeployError, deploy_version
from fleet_server.models import DeployRequest, Device, ModelVersion
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.service import audit
from fleet_server.rollouts.tables import (
    ABORTED,
    ACTIVE,
    COMPLETED,
    DEPLOYING,
    FAILED,
    GATE_FAILED,
    NOT_UPDATED,
    PENDING,
    ROLLED_BACK,
    RUNNING,
    Rollout,
    RolloutDevice,
    TelemetryAgg,
)

log = logging.getLogger(__name__)
MIN_SAMPLES = 3  # telemetry messages on the new version before gates are judged
LEASE = timedelta(seconds=30)  # a replica that dies mid-step blocks the rollout at most this long


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


def _is_shadow_wave(r: Rollout) -> bool:
    return bool(r.shadow) and r.wave == 0


def agg_dict(a: TelemetryAgg | None) -> dict[str, Any] | None:
    return a.means() if a is not None else None


class RolloutEngine:
    def __init__(self, engine: Engine, app: Any, interval_s: float = 1.0, name: str = "engine") -> None:
        self.engine, self.app, self.interval_s, self.name = engine, app, interval_s, name
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
            ids = s.exec(select(Rollout.id).where(col(Rollout.state).in_((RUNNING, "aborting")))).all()
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

    def _take_device(self, s: Session, d: RolloutDevice, from_states: tuple[str, ...], to_state: str) -> bool:
        """Move one device row between states only if no one else did: each device is acted on once."""
        res = s.execute(
            update(RolloutDevice)
            .where(col(RolloutDevice.id) == d.id, col(RolloutDevice.state).in_(from_states))
            .values(state=to_state, updated_at=_now())
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
            if r is None or r.state not in (RUNNING, "aborting"):
                return
            if not self._claim(s, r):
                return
            try:
                self._step(s, r)
            finally:
                self._release(s, rollout_id)

    def _step(self, s: Session, r: Rollout) -> None:
        if r.state in (RUNNING, "aborting"):  # re-read after the claim
            self.steps += 1
            actor = f"rollout-engine:{self.name}"
            if r.state == "aborting":
                self._abort(s, r, r.reason or "aborted", actor)
                return
            sizes = json.loads(r.waves_json)
            rows = s.exec(
                select(RolloutDevice).where(RolloutDevice.rollout_id == r.id, RolloutDevice.wave == r.wave)
            ).all()
            if r.wave_started_at is None:
                self._start_wave(s, r, rows, actor)
                return
            self._observe(s, r, rows)
            if any(d.state == DEPLOYING for d in rows):
                s.commit()
                return
            if r.wave_settled_at is None:
                r.wave_settled_at = _now()
                s.add(r)
                s.commit()
            baked = (_now() - (_aware(r.wave_settled_at) or _now())).total_seconds() >= r.bake_s or r.promote
            if not baked:
                return
            verdict = self._judge(s, r, rows)
            if verdict is None:
                return  # waiting for enough telemetry on the new version
            counted = [d for d in rows if d.state != NOT_UPDATED]
            bad = [d for d in counted if d.state in (FAILED, GATE_FAILED)]
            ratio = len(bad) / len(counted) if counted else 0.0
            name = "canary" if r.wave == 0 else f"wave {r.wave}"
            if counted and ratio > r.max_failure:
                reasons = "; ".join(f"{d.device_id}: {d.reason}" for d in bad[:5])
                self._abort(
                    s,
                    r,
                    f"{name}: {len(bad)}/{len(counted)} device(s) failed (max {r.max_failure:.0%}): {reasons}",
                    actor,
                )
                return
            audit(
                s,
                actor,
                "wave_passed",
                f"rollout/{r.id}",
                f"{name}: {len(counted) - len(bad)}/{len(counted)} ok, {len(rows) - len(counted)} not updated",
            )
            if _is_shadow_wave(r):
                # the candidate agreed in shadow: its canary devices now activate it with the next wave
                for d in rows:
                    if d.state == ACTIVE:
                        d.state, d.wave = PENDING, 1
                        s.add(d)
                if len(sizes) == 1:
                    sizes.append(sizes[0])
                    r.waves_json = json.dumps(sizes)
            if r.wave + 1 >= len(sizes):
                r.state = COMPLETED
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
        taken = set(
            s.execute(
                update(RolloutDevice)
                .where(
                    col(RolloutDevice.rollout_id) == r.id,
                    col(RolloutDevice.wave) == r.wave,
                    col(RolloutDevice.state) == PENDING,
                )
                .values(state=DEPLOYING, updated_at=_now())
                .returning(col(RolloutDevice.id))
            )
            .scalars()
            .all()
        )
        s.commit()
        ids = [d.device_id for d in rows if d.id in taken]
        devices = {x.id: x for x in s.exec(select(Device).where(col(Device.id).in_(ids))).all()} if ids else {}
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
        for d in rows:
            if d.id not in taken:
                continue
            d.state = DEPLOYING
            dev = devices.get(d.device_id)
            if dev is not None and d.prev_version is not None and dev.model == r.model:
                d.baseline_json = json.dumps(agg_dict(aggs.get((d.device_id, d.prev_version))))
            stale = aggs.get((d.device_id, r.version))
            if stale is not None:
                s.delete(stale)  # judge the new version on fresh telemetry only
            if _is_shadow_wave(r) and d.prev_version is not None:
                req = DeployRequest(
                    model=r.model,
                    version=d.prev_version,
                    slot=r.slot,
                    shadow_model=r.model,
                    shadow_version=r.version,
                    shadow_share=r.shadow_share,
                )
            else:
                req = DeployRequest(model=r.model, version=r.version, slot=r.slot)
            try:
                deploy_version(s, self.app, d.device_id, req, actor)
            except DeployError as exc:
                d.state, d.reason = FAILED, str(exc)
            d.updated_at = _now()
            s.add(d)
        r.wave_started_at = _now()
        s.add(r)
        audit(
            s,
            actor,
            "wave_started",
            f"rollout/{r.id}",
            f"{'canary' if r.wave == 0 else f'wave {r.wave}'}: {len(rows)} device(s)",
        )
        s.commit()

    def _observe(self, s: Session, r: Rollout, rows: list[RolloutDevice]) -> None:
        started = _aware(r.wave_started_at) or _now()
        waiting = [d for d in rows if d.state == DEPLOYING]
        devices = (
            {x.id: x for x in s.exec(select(Device).where(col(Device.id).in_([d.device_id for d in waiting]))).all()}
            if waiting
            else {}
        )
        for d in waiting:
            dev = devices.get(d.device_id)
            if dev is None:
                d.state, d.reason = NOT_UPDATED, "device deleted"
            elif _is_shadow_wave(r) and d.prev_version is not None:
                if dev.version == d.prev_version and dev.shadow_version == r.version and dev.state == "committed":
                    d.state = ACTIVE
                elif dev.shadow_reason:
                    d.state, d.reason = FAILED, f"shadow: {dev.shadow_reason}"
                elif (_now() - started).total_seconds() > r.offline_timeout_s:
                    d.state, d.reason = NOT_UPDATED, "shadow not started in time"
                else:
                    continue
            elif dev.version == r.version and dev.model == r.model and dev.state == "committed":
                d.state = ACTIVE
            elif dev.state == "failed" and dev.target_version == r.version:
                d.state, d.reason = FAILED, dev.reason or "update failed"
            elif (_now() - started).total_seconds() > r.offline_timeout_s:
                d.state = NOT_UPDATED
                d.reason = (
                    "offline: not updated" if not dev.online else f"no activation within {r.offline_timeout_s:g}s"
                )
            else:
                continue
            d.updated_at = _now()
            s.add(d)

    def _judge(self, s: Session, r: Rollout, rows: list[RolloutDevice]) -> bool | None:
        gates = [parse_gate(g) for g in json.loads(r.gates_json)]
        shadow_wave = _is_shadow_wave(r)
        if shadow_wave:  # the candidate only runs beside the old model: judge its agreement, nothing else
            gates = [g for g in gates if g.metric == "agreement"]
        else:  # agreement exists only while a shadow runs
            gates = [g for g in gates if g.metric != "agreement"]
        settled = _aware(r.wave_settled_at) or _now()
        for d in rows:
            if d.state != ACTIVE or not gates:
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
                d.state, d.reason = GATE_FAILED, "no telemetry on the new version"
                s.add(d)
                continue
            new = agg_dict(agg) or {}
            base = json.loads(d.baseline_json) if d.baseline_json else None
            failed = [text for ok, text in (g.check(new, base) for g in gates) if not ok]
            d.result_json = json.dumps(new)
            if failed:
                d.state, d.reason = GATE_FAILED, "; ".join(failed)
            s.add(d)
        return True

    def _judge_shadow(self, s: Session, r: Rollout, d: RolloutDevice, gates: list, settled: datetime) -> bool | None:
        """Agreement of the shadow candidate over this wave: the active version's sums since the wave began."""
        agg = s.get(TelemetryAgg, (d.device_id, r.model, d.prev_version))
        base = json.loads(d.baseline_json) if d.baseline_json else {}
        base = base or {}
        n = (agg.agree_n if agg else 0) - int(base.get("agree_n") or 0)
        if n < MIN_SAMPLES:
            if (_now() - settled).total_seconds() - r.bake_s < r.offline_timeout_s:
                return None
            d.state, d.reason = GATE_FAILED, "no shadow agreement reported"
            s.add(d)
            return True
        agreement = ((agg.agree_sum if agg else 0.0) - float(base.get("agree_sum") or 0.0)) / n
        failed = [text for ok, text in (g.check({"agreement": agreement}, None) for g in gates) if not ok]
        d.result_json = json.dumps({"agreement": agreement, "frames": n})
        if failed:
            d.state, d.reason = GATE_FAILED, "; ".join(failed)
        s.add(d)
        return True

    def _abort(self, s: Session, r: Rollout, reason: str, actor: str) -> None:
        moved = s.exec(
            select(RolloutDevice).where(
                RolloutDevice.rollout_id == r.id, col(RolloutDevice.state).in_((DEPLOYING, ACTIVE, FAILED, GATE_FAILED))
            )
        ).all()
        for d in moved:
            if not self._take_device(s, d, (DEPLOYING, ACTIVE, FAILED, GATE_FAILED), ROLLED_BACK):
                continue
            if d.prev_version is None:
                d.reason = (d.reason or "") + " (no previous version to return to)"
                s.add(d)
                continue
            prev = s.get(ModelVersion, d.prev_version_id)
            try:
                deploy_version(
                    s,
                    self.app,
                    d.device_id,
                    DeployRequest(model=prev.model if prev else r.model, version=d.prev_version, slot=r.slot),
                    actor,
                )
            except DeployError as exc:
                d.reason = f"rollback failed: {exc}"
            d.updated_at = _now()
            s.add(d)
        r.state, r.reason = ABORTED, reason
        s.add(r)
        audit(s, actor, "aborted", f"rollout/{r.id}", f"{reason}; {len(moved)} device(s) sent back")
        s.commit()
        log.warning("rollout %s aborted: %s", r.id, reason)
