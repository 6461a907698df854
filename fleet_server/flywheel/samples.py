"""The review queue: find samples, show them, review them, and turn labelled ones into a dataset version."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from fleet_server.blobs import Blobs
from fleet_server.flywheel.tables import LABELLED, REVIEW_TRANSITIONS, ReviewAction, Sample, SampleState
from model_zoo.datasets.store import DatasetError, DatasetStore, DatasetVersion, NewSample


class ReviewError(ValueError):
    """A review that cannot be applied as asked; str() names the sample and why."""


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=64)
    box: list[float] | None = Field(None, min_length=4, max_length=4, description="x1,y1,x2,y2 in image pixels")


def image_key(image: str) -> str:
    """Where a sample's image lives in the sample blob store."""
    return f"{image[:2]}/{image}"


def sample_public(s: Sample) -> dict[str, Any]:
    return {
        "id": s.id,
        "device_id": s.device_id,
        "model": s.model,
        "version": s.version,
        "strategy": s.strategy,
        "reason": s.reason,
        "source": s.source,
        "captured_at": s.captured_at,
        "received_at": s.received_at,
        "width": s.width,
        "height": s.height,
        "bytes": s.bytes,
        "sha256": s.sha256,
        "phash": s.phash,
        "state": s.state,
        "predictions": json.loads(s.predictions_json),
        "labels": json.loads(s.labels_json) if s.labels_json else None,
        "image_url": f"/api/v1/samples/{s.id}/image",
    }


def parse_state(state: str | None) -> SampleState | None:
    if state is None:
        return None
    try:
        return SampleState(state)
    except ValueError:
        raise ReviewError(f"state must be one of {', '.join(s.value for s in SampleState)}") from None


def filtered_samples(
    session: Session,
    device: str | None = None,
    model: str | None = None,
    version: int | None = None,
    strategy: str | None = None,
    state: str | None = None,
    label: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Sample], int]:
    """The review queue's filter (API and console): newest first, and how many match in all."""
    conds: list[Any] = []
    wanted = parse_state(state)
    if label is not None:
        needle = f'%"label": {json.dumps(label)}%'
        conds.append(or_(col(Sample.predictions_json).like(needle), col(Sample.labels_json).like(needle)))
    if since is not None:
        conds.append(col(Sample.received_at) >= since)
    if until is not None:
        conds.append(col(Sample.received_at) < until)
    for column, value in (
        (Sample.device_id, device),
        (Sample.model, model),
        (Sample.version, version),
        (Sample.strategy, strategy),
        (Sample.state, wanted),
    ):
        if value is not None:
            conds.append(column == value)
    rows = session.exec(select(Sample).where(*conds).order_by(col(Sample.id).desc()).offset(offset).limit(limit)).all()
    total = session.exec(select(func.count()).select_from(Sample).where(*conds)).one()
    return list(rows), int(total)


def apply_review(s: Sample, action: ReviewAction, labels: list[LabelIn] | None, min_score: float) -> None:
    """accept: keep pre-annotations scoring >= min_score; correct: take `labels`; reject: drop the labels."""
    state = REVIEW_TRANSITIONS[(SampleState(s.state), action)]
    if action == ReviewAction.REJECT:
        s.state, s.labels_json = state, None
        return
    if action == ReviewAction.ACCEPT:
        preds = [p for p in json.loads(s.predictions_json) if p["score"] >= min_score]
        chosen = [{"label": p["label"], "box": p.get("box")} for p in preds]
    else:
        if labels is None:
            raise ReviewError("correct needs the labels")
        chosen = [lab.model_dump() for lab in labels]
    for lab in chosen:
        b = lab.get("box")
        if b is not None and not (0 <= b[0] < b[2] <= s.width and 0 <= b[1] < b[3] <= s.height):
            raise ReviewError(f"box {b} is outside the {s.width}x{s.height} image")
    s.state = state
    s.labels_json = json.dumps(chosen)


def labelled_samples(session: Session, model: str | None = None, unused_only: bool = False) -> list[Sample]:
    q = select(Sample).where(col(Sample.state).in_(LABELLED))
    if unused_only:
        q = q.where(col(Sample.dataset).is_(None))
    if model:
        q = q.where(Sample.model == model)
    return list(session.exec(q.order_by(col(Sample.id))).all())


def dataset_from_samples(
    store: DatasetStore, name: str, rows: list[Sample], blobs: Blobs, val_fraction: float = 0.2
) -> DatasetVersion:
    """A new version of dataset `name`: its latest version plus these labelled samples (source sample:<id>)."""
    parent = store.load(name) if store.versions(name) else None
    if parent is None:
        raise DatasetError(f"no dataset named {name!r} to extend; create it first (synth or import)")
    classes = list(parent.classes)
    have = {s.sha256 for s in parent.samples}
    new = []
    for s in rows:
        labels = json.loads(s.labels_json or "[]")
        unknown = sorted({lab["label"] for lab in labels} - set(classes))
        if unknown:
            raise DatasetError(f"sample {s.id}: labels {unknown} are not classes of {parent.ref} ({classes})")
        boxed = [lab for lab in labels if lab.get("box")]
        if parent.task == "detect" and len(boxed) != len(labels):
            raise DatasetError(f"sample {s.id}: every label of a detection dataset needs a box")
        data = blobs.read(image_key(s.image))
        if hashlib.sha256(data).hexdigest() in have:
            continue
        if parent.task == "classify":
            if len(labels) != 1:
                raise DatasetError(f"sample {s.id}: a classification sample needs exactly one label")
            boxes, labs = [], [classes.index(labels[0]["label"])]
        else:
            boxes = [tuple(lab["box"]) for lab in boxed]
            labs = [classes.index(lab["label"]) for lab in boxed]
        new.append(NewSample(data, s.width, s.height, boxes, labs, source=f"sample:{s.id}"))
    if not new:
        raise DatasetError("no new labelled samples to add")
    return store.create(name, parent.task, classes, new, val_fraction, parent, note=f"{len(new)} reviewed hard samples")
