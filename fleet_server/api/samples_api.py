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
import os
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fleet_server.api.deps import AdminDep, SessionDep, _principal
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
        self.loaded = False

    def add(self, h: int, sample_id: int) -> None:
        with self.lock:
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
    if not idx.loaded:
        rows = session.exec(select(Sample.id, Sample.phash).order_by(col(Sample.id).desc()).limit(INDEX_SIZE)).all()
        for sid, ph in reversed(rows):
            idx.add(int(ph, 16), int(sid or 0))
        idx.loaded = True
    return idx


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
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload is {declared} bytes; the limit is {limit}")
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
    folder = settings.data_dir / "samples" / name[:2]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(jpeg)
    os.replace(tmp, folder / name)
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
        (folder / name).unlink(missing_ok=True)
        first = session.exec(select(Sample).where(Sample.sha256 == sha)).first()
        if first is None:
            raise
        return _dup(first, "already received")
    session.refresh(row)
    index.add(h, int(row.id or 0))
    return {"id": row.id, "stored": True}


def _dup(s: Sample, why: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"id": s.id, "stored": False, "duplicate": why}, status_code=200)


@router.get("/samples")
def list_samples(
    session: SessionDep,
    _: AdminDep,
    device: str | None = None,
    model: str | None = None,
    version: int | None = None,
    strategy: str | None = None,
    state: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    if state is not None and state not in SAMPLE_STATES:
        raise HTTPException(422, f"state must be one of {', '.join(SAMPLE_STATES)}")
    q = select(Sample)
    for column, value in ((Sample.device_id, device), (Sample.model, model), (Sample.version, version)):
        if value is not None:
            q = q.where(column == value)
    if strategy is not None:
        q = q.where(Sample.strategy == strategy)
    if state is not None:
        q = q.where(Sample.state == state)
    rows = session.exec(q.order_by(col(Sample.id).desc()).offset(offset).limit(limit)).all()
    return {"samples": [sample_public(s) for s in rows], "offset": offset, "limit": limit}


@router.get("/samples/{sample_id}")
def show_sample(sample_id: int, session: SessionDep, _: AdminDep) -> dict[str, Any]:
    s = session.get(Sample, sample_id)
    if s is None:
        raise HTTPException(404, f"no sample {sample_id}")
    return sample_public(s)


@router.get("/samples/{sample_id}/image")
def sample_image(sample_id: int, request: Request, session: SessionDep, _: AdminDep) -> FileResponse:
    s = session.get(Sample, sample_id)
    if s is None:
        raise HTTPException(404, f"no sample {sample_id}")
    path = request.app.state.settings.data_dir / "samples" / s.image[:2] / s.image
    return FileResponse(path, media_type="image/jpeg")
