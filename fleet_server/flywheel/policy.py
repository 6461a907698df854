"""Retrain policies: when enough reviewed hard samples wait for a model, extend its dataset with them and
queue a `retrain` job (fine-tune from the serving version, compile, evaluation gate, then offer a rollout)."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fleet_server.blobs import Blobs
from fleet_server.flywheel.drift import confidence_drift, retrain_trigger
from fleet_server.flywheel.samples import dataset_from_samples, labelled_samples
from fleet_server.flywheel.tables import RetrainPolicy
from fleet_server.jobs.service import artifact_path, locations
from fleet_server.jobs.states import PENDING
from fleet_server.jobs.tables import Job
from fleet_server.registry.tables import Artifact, ModelVersion
from fleet_server.settings import Settings
from fleet_server.storage import LocalStore
from fleet_server.webhooks import service as webhooks
from model_zoo.compile import TARGETS
from model_zoo.datasets.store import DatasetStore

log = logging.getLogger(__name__)


def latest_trained(session: Session, model: str) -> ModelVersion | None:
    q = select(ModelVersion).where(ModelVersion.model == model, col(ModelVersion.checkpoint).is_not(None))
    return session.exec(q.order_by(col(ModelVersion.version).desc())).first()


def policies_public(session: Session) -> list[dict[str, Any]]:
    """Every retrain policy, with its current confidence-drift reading where it watches drift."""
    out = []
    for p in session.exec(select(RetrainPolicy)).all():
        row = p.model_dump()
        current = latest_trained(session, p.model) if p.drift_drop else None
        row["drift"] = (
            confidence_drift(session, current.model, current.version, p.drift_window_min) if current else None
        )
        out.append(row)
    return out


def check_policies(
    engine: Engine, settings: Settings, datasets: DatasetStore, blobs: Blobs, artifacts: LocalStore
) -> list[int]:
    """Queue a retrain for every enabled policy whose threshold is met; returns the new job ids."""
    queued: list[int] = []
    with Session(engine) as s:
        active = [
            json.loads(j.params_json).get("name")
            for j in s.exec(select(Job).where(Job.kind == "retrain", col(Job.state).in_(PENDING))).all()
        ]
        for pol in s.exec(select(RetrainPolicy).where(RetrainPolicy.enabled == True)).all():  # noqa: E712
            if pol.model in active:
                continue
            rows = labelled_samples(s, pol.model, unused_only=True)
            if not rows:
                continue
            current = latest_trained(s, pol.model)
            drift = None
            if pol.drift_drop and current is not None and len(rows) < pol.min_new_labels:
                drift = confidence_drift(s, current.model, current.version, pol.drift_window_min)
            trigger = retrain_trigger(len(rows), pol.min_new_labels, pol.drift_drop, drift)
            if trigger is None:
                continue
            if current is None or not current.report_json:
                log.warning("retrain policy %s: no trained version to fine-tune; waiting", pol.model)
                continue
            report = json.loads(current.report_json)
            lineage = json.loads(current.lineage_json or "{}")
            fp32 = s.exec(
                select(Artifact).where(Artifact.version_id == current.id, Artifact.target == "onnx-fp32")
            ).first()
            if fp32 is None:
                continue
            try:
                dv = dataset_from_samples(datasets, pol.dataset, rows, blobs)
            except ValueError as exc:
                log.warning("retrain policy %s: cannot build the dataset: %s", pol.model, exc)
                continue
            for r in rows:
                r.dataset = dv.ref
                s.add(r)
            params = {
                "name": pol.model,
                "model": report["model"],
                "from_ref": f"{current.model}:{current.version}",
                "init_from": str(current.checkpoint),
                "dataset": dv.name,
                "dataset_version": dv.version,
                "dataset_ref": dv.ref,
                **locations(settings),
                "holdout_dataset": lineage.get("holdout") or lineage.get("dataset") or dv.ref,
                "current_onnx": artifact_path(fp32.sha256),
                "epochs": pol.epochs,
                "batch": 16,
                "lr": 1e-3,
                "size": report["input_size"],
                # the targets its lineage was compiled for (all, where the report does not say)
                "targets": [r["target"] for r in report.get("results", []) if r.get("target") in TARGETS] or None,
                "calibration": "minmax",
                "nproc": 1,
                "budget_points": pol.budget_points,
                "rollout": pol.rollout,
                "selector": pol.selector,
                "canary": pol.canary,
                "waves": pol.waves,
                "bake_s": pol.bake_s,
                "new_samples": len(rows),
                "trigger": trigger,
                "hard_share": 0.25,
            }
            job = Job(
                kind="retrain", params_json=json.dumps(params), created_by="flywheel", message=f"queued: {trigger}"
            )
            s.add(job)
            if trigger.startswith("drift"):
                webhooks.emit(s, "drift", {"model": pol.model, "version": current.version, "trigger": trigger,
                                           "reading": drift})  # fmt: skip
            s.commit()
            s.refresh(job)
            queued.append(int(job.id or 0))
            log.info("retrain policy %s: %s -> %s, job %s", pol.model, trigger, dv.ref, job.id)
    return queued
