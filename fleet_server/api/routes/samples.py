"""Hard samples: devices upload (multipart, their own identity only); people list, review and export them."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import col, select

from fleet_server.api.deps import (
    MAX_ID,
    Id,
    OperatorDep,
    ServicesDep,
    SessionDep,
    ViewerDep,
    binary,
    folder_as_targz,
    principal,
    read_capped,
)
from fleet_server.audit import audit
from fleet_server.flywheel.exchange import export_samples, import_labels
from fleet_server.flywheel.ingest import IngestError, IngestLimits, SampleMeta, ingest
from fleet_server.flywheel.samples import (
    LabelIn,
    ReviewError,
    apply_review,
    dataset_from_samples,
    filtered_samples,
    image_key,
    labelled_samples,
    parse_state,
    sample_public,
)
from fleet_server.flywheel.tables import ReviewAction, Sample
from model_zoo.datasets.store import DatasetError

router = APIRouter(prefix="/api/v1", tags=["samples"])


@router.post("/devices/{device_id}/samples", status_code=status.HTTP_201_CREATED)
async def upload(device_id: str, request: Request, session: SessionDep, services: ServicesDep) -> Any:
    who = principal(request, session)
    if who.kind != "device" or who.name != device_id:
        raise HTTPException(403, "a device may upload samples only under its own id")
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data with an `image` file and a `meta` JSON field")
    settings = services.settings
    body = await read_capped(request, settings.max_sample_bytes)
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
    limits = IngestLimits(settings.max_sample_pixels, settings.sample_dedup_distance)
    try:
        got = await ingest(
            session,
            device_id,
            await image.read(),
            meta,
            request.headers.get("idempotency-key"),
            services.sample_index,
            services.sample_blobs,
            limits,
        )
    except IngestError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if not got.stored:
        return JSONResponse({"id": got.sample_id, "stored": False, "duplicate": got.duplicate}, status_code=200)
    return {"id": got.sample_id, "stored": True}


@router.get("/samples")
def list_samples(
    session: SessionDep,
    _: ViewerDep,
    device: str | None = None,
    model: str | None = None,
    version: int | None = Query(None, ge=1, le=MAX_ID),
    strategy: str | None = None,
    state: str | None = None,
    label: str | None = Query(None, max_length=64, description="a class predicted or labelled in the sample"),
    since: datetime | None = Query(None, description="received at or after (ISO 8601)"),
    until: datetime | None = Query(None, description="received before (ISO 8601)"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_ID),
) -> dict[str, Any]:
    try:
        rows, total = filtered_samples(
            session, device, model, version, strategy, state, label, since, until, limit, offset
        )
    except ReviewError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"samples": [sample_public(s) for s in rows], "offset": offset, "limit": limit, "total": total}


def _sample(session: SessionDep, sample_id: int) -> Sample:
    s = session.get(Sample, sample_id)
    if s is None:
        raise HTTPException(404, f"no sample {sample_id}")
    return s


@router.get("/samples/{sample_id}")
def show_sample(sample_id: Id, session: SessionDep, _: ViewerDep) -> dict[str, Any]:
    return sample_public(_sample(session, sample_id))


@router.get("/samples/{sample_id}/image", response_class=FileResponse, responses=binary("image/jpeg", "The image"))
def sample_image(sample_id: Id, session: SessionDep, services: ServicesDep, _: ViewerDep) -> FileResponse:
    s = _sample(session, sample_id)
    path = services.sample_blobs.local(image_key(s.image))
    if path is None:
        raise HTTPException(404, f"the image of sample {sample_id} is missing from storage")
    return FileResponse(path, media_type="image/jpeg")


# -- review ------------------------------------------------------------------------------------------
class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: ReviewAction
    labels: list[LabelIn] | None = Field(None, max_length=500, description="the corrected labels (correct)")
    min_score: float = Field(0.25, ge=0, le=1, description="accept: keep pre-annotations scoring at least this")


class BulkReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(min_length=1, max_length=1000)
    action: ReviewAction = Field(description="accept | reject")
    min_score: float = Field(0.25, ge=0, le=1)


@router.post("/samples/{sample_id}/review")
def review(sample_id: Id, body: ReviewIn, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    s = _sample(session, sample_id)
    try:
        apply_review(s, body.action, body.labels, body.min_score)
    except ReviewError as exc:
        raise HTTPException(422, str(exc)) from None
    session.add(s)
    audit(session, who.name, f"sample.{body.action}", str(sample_id), s.labels_json)
    session.commit()
    session.refresh(s)
    return sample_public(s)


@router.post("/samples/review")
def review_bulk(body: BulkReviewIn, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    if body.action == ReviewAction.CORRECT:
        raise HTTPException(422, "bulk review accepts or rejects; correct one sample at a time")
    rows = session.exec(select(Sample).where(col(Sample.id).in_(body.ids))).all()
    missing = sorted(set(body.ids) - {int(r.id or 0) for r in rows})
    if missing:
        raise HTTPException(404, f"no samples {missing[:20]}")
    failed = []
    for s in rows:  # one bad sample never blocks the others: each one it could not review is named, with why
        try:
            apply_review(s, body.action, None, body.min_score)
        except ReviewError as exc:
            failed.append({"id": s.id, "reason": str(exc)})
            continue
        session.add(s)
    done = len(rows) - len(failed)
    audit(session, who.name, f"sample.bulk_{body.action}", f"{done} samples", json.dumps(body.ids[:100]))
    session.commit()
    return {"reviewed": done, "action": body.action, "failed": failed}


class FromSamplesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="only samples mined while this model served")
    val_fraction: float = Field(0.2, gt=0, lt=1)


@router.post("/datasets/{name}/from-samples", status_code=status.HTTP_201_CREATED)
def from_samples(
    name: str, body: FromSamplesIn, session: SessionDep, services: ServicesDep, who: OperatorDep
) -> dict[str, Any]:
    rows = labelled_samples(session, body.model)
    try:
        dv = dataset_from_samples(services.datasets, name, rows, services.sample_blobs, body.val_fraction)
    except DatasetError as exc:
        raise HTTPException(422, str(exc)) from None
    for s in rows:
        s.dataset = s.dataset or dv.ref
        session.add(s)
    audit(session, who.name, "dataset.from_samples", dv.ref, f"{len(dv.samples)} samples")
    session.commit()
    return dv.summary()


# -- export for an outside labelling tool, and labels back -------------------------------------------------
@router.get("/samples-export", response_class=FileResponse, responses=binary("application/gzip", "A .tar.gz"))
def samples_export(
    session: SessionDep,
    services: ServicesDep,
    _: ViewerDep,
    state: str = Query("new"),
    classes: str | None = Query(None, description="comma-separated category order (default: labels seen)"),
    format: str = Query("coco", pattern="^(coco|yolo)$"),
    limit: int = Query(1000, ge=1, le=20000),
) -> FileResponse:
    """COCO (annotations.json + images/<id>.jpg) or YOLO (images/, labels/<id>.txt, classes.txt) of samples in
    `state`: pre-annotations for new ones, the reviewed labels otherwise. CVAT and Label Studio import either;
    `samples-import` takes COCO labels back."""
    try:
        wanted = parse_state(state)
    except ReviewError as exc:
        raise HTTPException(422, str(exc)) from None
    rows = session.exec(select(Sample).where(Sample.state == wanted).order_by(col(Sample.id)).limit(limit)).all()
    work = Path(tempfile.mkdtemp(prefix="samples-", dir=services.store.root / "tmp"))
    folder = work / f"samples-{state}"
    export_samples(list(rows), folder, format, services.sample_blobs, classes.split(",") if classes else None)
    return folder_as_targz(folder, work)


@router.post("/samples-import")
async def samples_import(request: Request, session: SessionDep, who: OperatorDep) -> dict[str, Any]:
    """COCO annotations for exported samples (file_name `<id>.jpg`): each listed image's labels are replaced
    and it becomes `corrected`. Validated whole first: an unknown image or a box outside it changes nothing."""
    body = await read_capped(request, 64 * 1024 * 1024)
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise HTTPException(422, f"not a COCO annotations document: {exc}") from None
    try:
        updates = import_labels(session, doc)
    except ReviewError as exc:
        session.rollback()
        raise HTTPException(422, str(exc)) from None
    for s in updates:
        session.add(s)
    audit(session, who.name, "sample.import_labels", f"{len(updates)} samples")
    session.commit()
    return {"updated": len(updates)}
