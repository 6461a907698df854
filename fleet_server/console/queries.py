"""Database reads behind the console pages: filtered, paginated, counted in SQL (fleets of thousands)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from edge_agent.protocol.manifest import RefError, parse_ref_latest
from edge_agent.protocol.messages import UpdateStateName
from fleet_server.audit import entries
from fleet_server.devices import problems
from fleet_server.devices.tables import Deployment, Device, TelemetryPoint
from fleet_server.flywheel.tables import Sample, SampleState
from fleet_server.jobs.tables import Job
from fleet_server.registry.tables import ModelVersion
from fleet_server.rollouts.engine import agg_dict
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.tables import Rollout, RolloutDevice, TelemetryAgg

PAGE = 50
UPDATING = tuple(
    s for s in UpdateStateName if s not in (UpdateStateName.idle, UpdateStateName.committed, UpdateStateName.failed)
)
STATES = {
    "online": lambda: col(Device.online).is_(True),
    "offline": lambda: col(Device.online).is_(False),
    "updating": lambda: col(Device.state).in_(UPDATING),
    "failed": lambda: col(Device.state) == UpdateStateName.failed,
    "degraded": lambda: problems.where_problem(),
}


@dataclass
class FleetFilter:
    q: str = ""
    state: str = ""
    tag: str = ""  # key=value
    model: str = ""
    page: int = 1

    def where(self) -> list[Any]:
        conds: list[Any] = []
        if self.q:
            conds.append(col(Device.id).contains(self.q.strip()))
        if self.state in STATES:
            conds.append(STATES[self.state]())
        if self.tag and "=" in self.tag:
            k, _, v = self.tag.partition("=")
            conds.append(col(Device.tags_json).contains(json.dumps({k.strip(): v.strip()})[1:-1]))
        if self.model:
            try:
                name, ver = parse_ref_latest(self.model)
            except RefError:  # a filter typed by hand: match the text as a model name
                name, ver = self.model, None
            conds.append(col(Device.model) == name)
            if ver is not None:
                conds.append(col(Device.version) == ver)
        return conds

    def query_string(self, **override: Any) -> str:

        vals = {"q": self.q, "state": self.state, "tag": self.tag, "model": self.model, "page": self.page, **override}
        return urlencode({k: v for k, v in vals.items() if v and not (k == "page" and v == 1)})


@dataclass
class FleetPage:
    devices: list[dict[str, Any]]
    total: int  # matching the filter
    pages: int
    counts: dict[str, int] = field(default_factory=dict)  # whole fleet


def _ago(t: datetime | None, now: datetime) -> str:
    if t is None:
        return "never"
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    s = max(0, int((now - t).total_seconds()))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def device_row(d: Device, now: datetime) -> dict[str, Any]:
    return {
        "id": d.id,
        "online": d.online,
        "tags": json.loads(d.tags_json or "{}"),
        "model": d.model,
        "version": d.version,
        "target_version": d.target_version,
        "state": d.state or "-",
        "reason": d.reason,
        "shadow_version": d.shadow_version,
        "fps": d.fps,
        "p95": d.latency_ms_p95,
        "staleness": d.staleness_ms_p99,
        "last_seen": _ago(d.last_seen, now),
        "problem": problems.describe(d, now),
    }


def fleet_page(session: Session, f: FleetFilter) -> FleetPage:
    conds = f.where()
    # the whole fleet's counts in one pass over the table (one COUNT per state took 6 passes: 100 ms at 100k)
    sums = [func.coalesce(func.sum(case((cond(), 1), else_=0)), 0) for cond in STATES.values()]
    whole = session.execute(sa_select(func.count(), *sums).select_from(Device)).one()
    counts = {"devices": int(whole[0]), **{name: int(v) for name, v in zip(STATES, whole[1:], strict=True)}}
    total = session.exec(select(func.count()).select_from(Device).where(*conds)).one() if conds else counts["devices"]
    pages = max(1, (total + PAGE - 1) // PAGE)
    page = min(max(1, f.page), pages)
    rows = session.exec(
        select(Device).where(*conds).order_by(col(Device.id)).offset((page - 1) * PAGE).limit(PAGE)
    ).all()
    now = datetime.now(timezone.utc)
    return FleetPage([device_row(d, now) for d in rows], total, pages, counts)


def tag_values(session: Session, limit: int = 2000) -> list[str]:
    """Distinct key=value tags over (at most) the first `limit` devices, for the filter's suggestions."""
    seen: set[str] = set()
    for tags in session.exec(select(Device.tags_json).limit(limit)).all():
        for k, v in json.loads(tags or "{}").items():
            seen.add(f"{k}={v}")
    return sorted(seen)[:200]


def series(session: Session, device_id: str, minutes: float = 60) -> dict[str, Any]:
    """Telemetry points for the device page's charts, and a confidence histogram over the window."""
    since = datetime.now(timezone.utc) - timedelta(minutes=minutes)
    pts = session.exec(
        select(TelemetryPoint)
        .where(TelemetryPoint.device_id == device_id, col(TelemetryPoint.at) >= since)
        .order_by(col(TelemetryPoint.at))
    ).all()
    hist = [0] * 10
    for p in pts:
        for c in json.loads(p.confidences):
            hist[min(9, max(0, int(float(c) * 10)))] += 1

    def ts(t: datetime) -> float:
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()

    return {
        "t": [ts(p.at) for p in pts],
        "fps": [p.fps for p in pts],
        "latency_ms_p95": [p.latency_ms_p95 for p in pts],
        "staleness_ms_p99": [p.staleness_ms_p99 for p in pts],
        "dropped": [p.dropped for p in pts],
        "confidence_hist": hist,
    }


AUDIT_SENTENCES = {
    "token-rotated": "{actor} gave it a new token",
    "revoked": "{actor} revoked its credential",
    "tagged": "{actor} set its tags",
    "device.mining": "{actor} changed its hard-sample mining",
}


def device_timeline(session: Session, device_id: str, limit: int = 30) -> list[dict[str, Any]]:
    """What happened to a device, newest first, as sentences: what was deployed and by whom (a rollout, a
    rollback, a person), how each rollout judged it, and what people changed. Raw details fold away."""
    out: list[dict[str, Any]] = []
    for d in deployments(session, device_id, limit):
        who = "the rollout engine" if d["by"].startswith("rollout-engine") else d["by"]
        text = f"{who} deployed {d['model']}:{d['version']}" + (" with a shadow" if d["shadow"] else "")
        out.append({"at": d["at"], "text": text + f" (revision {d['revision']})", "kind": "deploy", "detail": None})
    rows = session.exec(
        select(RolloutDevice, Rollout)
        .where(RolloutDevice.device_id == device_id, col(RolloutDevice.rollout_id) == col(Rollout.id))
        .order_by(col(RolloutDevice.id).desc())
        .limit(limit)
    ).all()
    for rd, r in rows:
        state = str(rd.state).replace("_", " ")
        text = f"rollout {r.id} of {r.model}:{r.version}, wave {rd.wave}: {state}"
        out.append({"at": rd.updated_at, "text": text + (f": {rd.reason}" if rd.reason else ""),
                    "kind": "bad" if rd.state in ("rolled_back", "failed", "not_updated") else "rollout",
                    "detail": rd.result_json})  # fmt: skip
    for e in entries(session, target=f"device/{device_id}", limit=limit) + entries(
        session, target=device_id, limit=limit
    ):
        sentence = AUDIT_SENTENCES.get(e.action)
        if sentence:
            out.append({"at": e.at, "text": sentence.format(actor=e.actor), "kind": "change", "detail": e.detail})
    for item in out:
        item["at"] = item["at"] if item["at"].tzinfo else item["at"].replace(tzinfo=timezone.utc)
    return sorted(out, key=lambda x: x["at"], reverse=True)[:limit]


def deployments(session: Session, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
    rows = session.exec(
        select(Deployment, ModelVersion)
        .where(Deployment.device_id == device_id, Deployment.version_id == ModelVersion.id)
        .order_by(col(Deployment.id).desc())
        .limit(limit)
    ).all()
    return [
        {
            "revision": d.revision,
            "slot": d.slot,
            "model": mv.model,
            "version": mv.version,
            "shadow": d.shadow_version_id is not None,
            "by": d.created_by,
            "at": d.created_at,
        }
        for d, mv in rows
    ]


def gate_rows(session: Session, r: Any) -> list[dict[str, Any]]:
    """Per device of a rollout: its state and each gate's value against its threshold (from the device's
    baseline on the previous version), judged the way the engine judges; live while the wave bakes."""

    gates = [parse_gate(g) for g in json.loads(r.gates_json)]
    rows = session.exec(
        select(RolloutDevice).where(RolloutDevice.rollout_id == r.id).order_by(col(RolloutDevice.wave))
    ).all()
    out = []
    for d in rows[:500]:
        checks: list[dict[str, Any]] = []
        if d.state in ("active", "gate_failed", "deploying"):
            new = (
                json.loads(d.result_json)
                if d.result_json
                else agg_dict(session.get(TelemetryAgg, (d.device_id, r.model, r.version)))
            )
            base = json.loads(d.baseline_json) if d.baseline_json else None
            for g in gates:
                if new is None or (g.metric == "agreement") != ("agreement" in new):
                    continue
                ok, text = g.check(new, base)
                checks.append({"ok": ok, "text": text})
        out.append({"device": d.device_id, "wave": d.wave, "state": d.state, "reason": d.reason, "checks": checks})
    return out


# -- single reads behind the pages --------------------------------------------------------------------
def device_samples(session: Session, device_id: str, limit: int = 12) -> list[Sample]:
    q = select(Sample).where(Sample.device_id == device_id).order_by(col(Sample.id).desc()).limit(limit)
    return list(session.exec(q).all())


def model_versions(session: Session) -> list[ModelVersion]:
    q = select(ModelVersion).order_by(col(ModelVersion.model), col(ModelVersion.version).desc())
    return list(session.exec(q).all())


def model_version(session: Session, name: str, version: int) -> ModelVersion | None:
    q = select(ModelVersion).where(ModelVersion.model == name, ModelVersion.version == version)
    return session.exec(q).first()


def running(session: Session, name: str, version: int, limit: int = 1000) -> list[str]:
    """Ids of the devices that report running this version."""
    q = select(Device.id).where(Device.model == name, Device.version == version).limit(limit)
    return list(session.exec(q).all())


def recent_rollouts(session: Session, limit: int = 100) -> list[Rollout]:
    return list(session.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(limit)).all())


def version_refs(session: Session) -> list[str]:
    """NAME:VERSION of every model version, newest first (the rollout form's choices)."""
    rows = session.exec(select(ModelVersion.model, ModelVersion.version).order_by(col(ModelVersion.id).desc())).all()
    return [f"{m}:{v}" for m, v in rows]


def sample_classes(session: Session, s: Sample) -> list[str]:
    """The classes of the model version that mined the sample (the box editor's choices)."""
    if not s.model or s.version is None:
        return []
    mv = model_version(session, s.model, s.version)
    return json.loads(mv.classes_json) if mv else []


def next_new_sample(session: Session, after: int) -> int | None:
    q = select(Sample.id).where(Sample.state == SampleState.NEW, col(Sample.id) != after)
    return session.exec(q.order_by(col(Sample.id)).limit(1)).first()


def recent_jobs(session: Session, limit: int = 100) -> list[Job]:
    return list(session.exec(select(Job).order_by(col(Job.id).desc()).limit(limit)).all())
