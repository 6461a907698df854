"""Hard samples: devices upload (multipart, their own identity only), admins list and fetch them.

An upload is bounded while it streams, its image checked by magic bytes and header before any decode,
re-encoded, stored under a generated name, and deduplicated by sha256 (a retried upload) and by
perceptual hash against every device's recent samples (the same scene seen twice). Nothing is stored
unless the whole upload is valid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fleet_server.api.deps import OperatorDep, SessionDep, ViewerDep, _principal, check_declared_length, folder_as_targz
from fleet_server.blobs import Blobs
from fleet_server.flywheel.images import ImageRejected, sanitize
from fleet_server.flywheel.tables import SAMPLE_STATES, Sample

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["samples"])
INDEX_SIZE = 100_000


class PredictionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    label: str = Field(max_length=64)
    score: float = Field(ge=0, le=1)
    box: list[float] | None = Field(None, min_length=4, max_length=4)


class SampleMeta(BaseModel):
    model_config = ConfigDict(extra="ignore")
    strategy: str = Field(max_length=32, pattern=r"^[a-z_]+$")
    reason: str = Field("", max_length=200)
    model: str | None = Field(None, max_length=64)
    version: int | None = Field(None, ge=1)
    source: str = Field("", max_length=64)
    captured_at: float | None = None
    predictions: list[PredictionIn] = Field(default_factory=list, max_length=300)


class PhashIndex:
    """Recent sample hashes with their ids, searched by Hamming distance in one vectorised pass."""

    def __init__(self, capacity: int = INDEX_SIZE) -> None:
        self.h = np.zeros(capacity, np.uint64)
        self.ids = np.zeros(capacity, np.int64)
        self.n = self.next = 0
        self.lock = threading.Lock()
        self.last_id = 0  # the newest sample id in the index

    def add(self, h: int, sample_id: int) -> None:
        with self.lock:
            if sample_id <= self.last_id:
                return  # already in (added after this replica's own insert, then seen again in the catch-up)
            self.last_id = sample_id
            self.h[self.next], self.ids[self.next] = np.uint64(h), sample_id
            self.next = (self.next + 1) % len(self.h)
            self.n = min(self.n + 1, len(self.h))

    def nearest(self, h: int) -> tuple[int, int | None]:
        with self.lock:
            if self.n == 0:
                return 65, None
            d = np.bitwise_count(self.h[: self.n] ^ np.uint64(h))
            i = int(d.argmin())
            return int(d[i]), int(self.ids[i])


def _index(request: Request, session: Session) -> PhashIndex:
    app = request.app.state
    idx: PhashIndex | None = getattr(app, "sample_index", None)
    if idx is None:
        idx = app.sample_index = PhashIndex()
    # catch up with samples any replica stored since the last look (one indexed query), so near-duplicates
    # are found across replicas, not only among this one's uploads
    q = select(Sample.id, Sample.phash).where(col(Sample.id) > idx.last_id)
    rows = session.exec(q.order_by(col(Sample.id).desc()).limit(INDEX_SIZE)).all()
    for sid, ph in reversed(rows):
        idx.add(int(ph, 16), int(sid or 0))
    return idx


def _key(image: str) -> str:
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


async def _read_capped(request: Request, limit: int) -> bytes:
    check_declared_length(request, limit)
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise HTTPException(413, f"upload exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/devices/{device_id}/samples", status_code=status.HTTP_201_CREATED)
async def upload(device_id: str, request: Request, session: SessionDep) -> Any:
    from edge_agent.flywheel.phash import phash

    who = _principal(request, session)
    if who.kind != "device" or who.name != device_id:
        raise HTTPException(403, "a device may upload samples only under its own id")
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data with an `image` file and a `meta` JSON field")
    settings = request.app.state.settings
    body = await _read_capped(request, settings.max_sample_bytes)
    request._body = body  # the form parser reads the capped body, not the socket
    try:
        form = await request.form(max_files=1, max_fields=2, max_part_size=64 * 1024)
    except Exception as exc:  # noqa: BLE001 - malformed multipart of any kind
        raise HTTPException(400, f"malformed multipart body: {str(exc)[:200]}") from None
    image, meta_raw = form.get("image"), form.get("meta")
    if image is None or isinstance(image, str) or not isinstance(meta_raw, str):
        raise HTTPException(422, "the upload needs an `image` file part and a `meta` JSON field")
    try:
        meta = SampleMeta.model_validate_json(meta_raw)
    except ValidationError as exc:
        raise HTTPException(422, f"bad meta: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    data = await image.read()
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    key = request.headers.get("idempotency-key")
    if key and key != sha:
        raise HTTPException(422, "Idempotency-Key must be the sha256 of the image bytes")
    existing = session.exec(select(Sample).where(Sample.sha256 == sha)).first()
    if existing is not None:
        return _dup(existing, "already received")
    try:
        img, jpeg = await asyncio.to_thread(sanitize, data, settings.max_sample_pixels)
    except ImageRejected as exc:
        raise HTTPException(exc.status, str(exc)) from None
    h = phash(img)
    index = _index(request, session)
    dist, near = index.nearest(h)
    if near is not None and dist <= settings.sample_dedup_distance:
        twin = session.get(Sample, near)
        if twin is not None:
            return _dup(twin, f"near-duplicate (Hamming {dist}) of sample {near}")
    name = f"{uuid.uuid4().hex}.jpg"
    blobs = request.app.state.sample_blobs
    try:
        await asyncio.to_thread(blobs.put_bytes, _key(name), jpeg)
    except Exception as exc:  # object storage down: refuse, the device keeps the sample and retries
        log.warning("could not store a sample from %s: %s", device_id, exc)
        raise HTTPException(503, "sample storage is unavailable; retry later") from exc
    row = Sample(
        device_id=device_id,
        sha256=sha,
        phash=f"{h:016x}",
        model=meta.model,
        version=meta.version,
        strategy=meta.strategy,
        reason=meta.reason,
        source=meta.source,
        captured_at=datetime.fromtimestamp(meta.captured_at, timezone.utc) if meta.captured_at else None,
        width=img.shape[1],
        height=img.shape[0],
        image=name,
        bytes=len(jpeg),
        predictions_json=json.dumps([p.model_dump() for p in meta.predictions]),
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # the same bytes raced in from a retry: keep the first
        session.rollback()
        await asyncio.to_thread(blobs.delete, _key(name))
        first = session.exec(select(Sample).where(Sample.sha256 == sha)).first()
        if first is None:
            raise
        return _dup(first, "already received")
    session.refresh(row)
    return {"id": row.id, "stored": True}


def _dup(s: Sample, why: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"id": s.id, "stored": False, "duplicate": why}, status_code=200)


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
    from sqlalchemy import func

    if state is not None and state not in SAMPLE_STATES:
        raise HTTPException(422, f"state must be one of {', '.join(SAMPLE_STATES)}")
    conds: list[Any] = []
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
        (Sample.state, state),
    ):
        if value is not None:
            conds.append(column == value)
    rows = session.exec(select(Sample).where(*conds).order_by(col(Sample.id).desc()).offset(offset).limit(limit)).all()
    total = session.exec(select(func.count()).select_from(Sample).where(*conds)).one()
    return list(rows), int(total)


@router.get("/samples")
def list_samples(
    session: SessionDep,
    _: ViewerDep,
    device: str | None = None,
    model: str | None = None,
    version: int | None = None,
    strategy: str | None = None,
    state: str | None = None,
    label: str | None = Query(None, max_length=64, description="a class predicted or labelled in the sample"),
    since: datetime | None = Query(None, description="received at or after (ISO 8601)"),
    until: datetime | None = Query(None, description="received before (ISO 8601)"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    rows, total = filtered_samples(session, device, model, version, strategy, state, label, since, until, limit, offset)
    return {"samples": [sample_public(s) for s in rows], "offset": offset, "limit": limit, "total": total}


@router.get("/samples/{sample_id}")
def show_sample(sample_id: int, session: SessionDep, _: ViewerDep) -> dict[str, Any]:
    s = session.get(Sample, sample_id)
    if s is None:
        raise HTTPException(404, f"no sample {sample_id}")
    return sample_public(s)


@router.get("/samples/{sample_id}/image")
def sample_image(sample_id: int, request: Request, session: SessionDep, _: ViewerDep) -> FileResponse:
    s = session.get(Sample, sample_id)
    if s is None:
        raise HTTPException(404, f"no sample {sample_id}")
    path = request.app.state.sample_blobs.local(_key(s.image))
    if path is None:
        raise HTTPException(404, f"the image of sample {sample_id} is missing from storage")
    return FileResponse(path, media_type="image/jpeg")


# -- review ------------------------------------------------------------------------------------------
class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=64)
    box: list[float] | None = Field(None, min_length=4, max_length=4, description="x1,y1,x2,y2 in image pixels")


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(pattern="^(accept|correct|reject)$")
    labels: list[LabelIn] | None = Field(None, max_length=500, description="the corrected labels (correct)")
    min_score: float = Field(0.25, ge=0, le=1, description="accept: keep pre-annotations scoring at least this")


class BulkReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(min_length=1, max_length=1000)
    action: str = Field(pattern="^(accept|reject)$")
    min_score: float = Field(0.25, ge=0, le=1)


def _apply_review(s: Sample, action: str, labels: list[LabelIn] | None, min_score: float) -> None:
    if action == "reject":
        s.state, s.labels_json = "rejected", None
        return
    if action == "accept":
        preds = [p for p in json.loads(s.predictions_json) if p["score"] >= min_score]
        chosen = [{"label": p["label"], "box": p.get("box")} for p in preds]
        s.state = "accepted"
    else:
        if labels is None:
            raise HTTPException(422, "correct needs the labels")
        chosen = [lab.model_dump() for lab in labels]
        s.state = "corrected"
    for lab in chosen:
        b = lab.get("box")
        if b is not None and not (0 <= b[0] < b[2] <= s.width and 0 <= b[1] < b[3] <= s.height):
            raise HTTPException(422, f"box {b} is outside the {s.width}x{s.height} image")
    s.labels_json = json.dumps(chosen)


@router.post("/samples/{sample_id}/review")
def review(sample_id: int, body: ReviewIn, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    from fleet_server.rollouts.service import audit

    s = session.get(Sample, sample_id)
    if s is None:
        raise HTTPException(404, f"no sample {sample_id}")
    _apply_review(s, body.action, body.labels, body.min_score)
    session.add(s)
    audit(session, who.name, f"sample.{body.action}", str(sample_id), s.labels_json)
    session.commit()
    session.refresh(s)
    return sample_public(s)


@router.post("/samples/review")
def review_bulk(body: BulkReviewIn, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    from fleet_server.rollouts.service import audit

    rows = session.exec(select(Sample).where(col(Sample.id).in_(body.ids))).all()
    missing = sorted(set(body.ids) - {int(r.id or 0) for r in rows})
    if missing:
        raise HTTPException(404, f"no samples {missing[:20]}")
    for s in rows:
        _apply_review(s, body.action, None, body.min_score)
        session.add(s)
    audit(session, who.name, f"sample.bulk_{body.action}", f"{len(rows)} samples", json.dumps(body.ids[:100]))
    session.commit()
    return {"reviewed": len(rows), "action": body.action}


class FromSamplesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="only samples mined while this model served")
    val_fraction: float = Field(0.2, gt=0, lt=1)


def labelled_samples(session: Session, model: str | None = None, unused_only: bool = False) -> list[Sample]:
    q = select(Sample).where(col(Sample.state).in_(("accepted", "corrected")))
    if unused_only:
        q = q.where(col(Sample.dataset).is_(None))
    if model:
        q = q.where(Sample.model == model)
    return list(session.exec(q.order_by(col(Sample.id))).all())


def dataset_from_samples(  # type: ignore[no-untyped-def]
    data_dir: Any, name: str, rows: list[Sample], val_fraction: float = 0.2, blobs: Blobs | None = None
):
    """A new version of dataset `name`: its latest version plus these labelled samples (source sample:<id>)."""
    from fleet_server.zoo import datasets_dir
    from model_zoo.datasets.store import DatasetError, DatasetStore, NewSample

    store = DatasetStore(datasets_dir(data_dir))
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
        data = (blobs or Blobs(data_dir / "samples")).read(_key(s.image))
        import hashlib

        if hashlib.sha256(data).hexdigest() in have:
            continue
        if parent.task == "classify":
            if len(labels) != 1:
                raise DatasetError(f"sample {s.id}: a classification sample needs exactly one label")
            boxes, labs = [], [classes.index(labels[0]["label"])]
        else:
            boxes = [tuple(lab["box"]) for lab in boxed]
            labs = [classes.index(lab["label"]) for lab in boxed]
        new.append(NewSample(data, s.width, s.height, boxes, labs, source=f"sample:{s.id}"))  # type: ignore[arg-type]
    if not new:
        raise DatasetError("no new labelled samples to add")
    return store.create(name, parent.task, classes, new, val_fraction, parent, note=f"{len(new)} reviewed hard samples")


@router.post("/datasets/{name}/from-samples", status_code=status.HTTP_201_CREATED)
def from_samples(name: str, body: FromSamplesIn, request: Request, session: SessionDep, who: OperatorDep) -> dict:
    from fleet_server.rollouts.service import audit
    from model_zoo.datasets.store import DatasetError

    rows = labelled_samples(session, body.model)
    try:
        app = request.app.state
        dv = dataset_from_samples(app.settings.data_dir, name, rows, body.val_fraction, app.sample_blobs)
    except DatasetError as exc:
        raise HTTPException(422, str(exc)) from None
    for s in rows:
        s.dataset = s.dataset or dv.ref
        session.add(s)
    audit(session, who.name, "dataset.from_samples", dv.ref, f"{len(dv.samples)} samples")
    session.commit()
    return dv.summary()


# -- export for an outside labelling tool, and labels back -------------------------------------------------
@router.get("/samples-export")
def export_samples(
    request: Request,
    session: SessionDep,
    _: ViewerDep,
    state: str = Query("new"),
    classes: str | None = Query(None, description="comma-separated category order (default: labels seen)"),
    format: str = Query("coco", pattern="^(coco|yolo)$"),
    limit: int = Query(1000, ge=1, le=20000),
) -> FileResponse:
    """COCO (annotations.json + images/<id>.jpg) or YOLO (images/, labels/<id>.txt, classes.txt) of samples in
    `state`: pre-annotations for new ones, the reviewed labels otherwise. CVAT and Label Studio import either;
    `samples-import` takes COCO labels back."""
    import tempfile

    if state not in SAMPLE_STATES:
        raise HTTPException(422, f"state must be one of {', '.join(SAMPLE_STATES)}")
    rows = session.exec(select(Sample).where(Sample.state == state).order_by(col(Sample.id)).limit(limit)).all()
    labelled = [(s, json.loads(s.labels_json) if s.labels_json else json.loads(s.predictions_json)) for s in rows]
    names = classes.split(",") if classes else sorted({lab["label"] for _, labs in labelled for lab in labs})
    cat = {n: i + 1 for i, n in enumerate(names)}
    images, anns = [], []
    work = Path(tempfile.mkdtemp(prefix="samples-", dir=request.app.state.store.root / "tmp"))
    folder = work / f"samples-{state}"
    (folder / "images").mkdir(parents=True)
    for s, labs in labelled:
        (folder / "images" / f"{s.id}.jpg").write_bytes(request.app.state.sample_blobs.read(_key(s.image)))
        images.append({"id": s.id, "file_name": f"{s.id}.jpg", "width": s.width, "height": s.height})
        for lab in labs:
            if lab.get("box") is None or lab["label"] not in cat:
                continue
            x1, y1, x2, y2 = lab["box"]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": s.id,
                    "category_id": cat[lab["label"]],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                    **({"score": lab["score"]} if "score" in lab else {}),
                }
            )
    if format == "yolo":
        (folder / "labels").mkdir()
        (folder / "classes.txt").write_text("".join(f"{n}\n" for n in names))
        size = {im["id"]: (im["width"], im["height"]) for im in images}
        lines: dict[int, list[str]] = {im["id"]: [] for im in images}
        for a in anns:
            w, h = size[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            c = a["category_id"] - 1
            lines[a["image_id"]].append(f"{c} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        for image_id, rows_ in lines.items():
            (folder / "labels" / f"{image_id}.txt").write_text("".join(f"{ln}\n" for ln in rows_))
        return folder_as_targz(folder, work)
    doc = {"images": images, "annotations": anns, "categories": [{"id": i, "name": n} for n, i in cat.items()]}
    (folder / "annotations.json").write_text(json.dumps(doc, indent=1))
    return folder_as_targz(folder, work)


@router.post("/samples-import")
async def import_labels(request: Request, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    """COCO annotations for exported samples (file_name `<id>.jpg`): each listed image's labels are replaced
    and it becomes `corrected`. Validated whole first: an unknown image or a box outside it changes nothing."""
    from fleet_server.rollouts.service import audit

    body = await _read_capped(request, 64 * 1024 * 1024)
    try:
        doc = json.loads(body)
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        images = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        anns = list(doc.get("annotations", []))
    except (ValueError, KeyError, TypeError) as exc:
        raise HTTPException(422, f"not a COCO annotations document: {exc}") from None
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    for k, a in enumerate(anns):
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            by_image[int(a["image_id"])].append({"label": cats[int(a["category_id"])], "box": [x, y, x + w, y + h]})
        except (KeyError, ValueError, TypeError):
            raise HTTPException(422, f"annotations[{k}]: needs a known image_id, category_id and bbox") from None
    updates = []
    for image_id, labs in by_image.items():
        stem = images[image_id].rsplit("/", 1)[-1].split(".")[0]
        s = session.get(Sample, int(stem)) if stem.isdigit() else None
        if s is None:
            raise HTTPException(422, f"image {images[image_id]!r} is not an exported sample (<id>.jpg)")
        _apply_review(s, "correct", [LabelIn(**lab) for lab in labs], 0.0)
        updates.append(s)
    for s in updates:
        session.add(s)
    audit(session, who.name, "sample.import_labels", f"{len(updates)} samples")
    session.commit()
    return {"updated": len(updates)}
