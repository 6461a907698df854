"""Taking in one hard sample from a device: dedup, sanitise, store, record; nothing half-stored.

The order is fixed and cheap first: the exact bytes seen before (sha256, a retried upload) → the image
checked and re-encoded (`images.sanitize`) → the same scene seen before (perceptual hash within
`dedup_distance` of any replica's recent samples) → the re-encoded JPEG stored → the row inserted. A
race between two uploads of the same bytes keeps the first and removes the second's image.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from edge_agent.flywheel.phash import phash
from fleet_server.blobs import Blobs
from fleet_server.flywheel.images import ImageRejected, sanitize
from fleet_server.flywheel.phash_index import PhashIndex
from fleet_server.flywheel.samples import image_key
from fleet_server.flywheel.tables import Sample

log = logging.getLogger(__name__)


class PredictionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    label: str = Field(max_length=64)
    score: float = Field(ge=0, le=1)
    box: list[float] | None = Field(None, min_length=4, max_length=4)


class SampleMeta(BaseModel):
    """What the device says about the sample (the `meta` form field)."""

    model_config = ConfigDict(extra="ignore")
    strategy: str = Field(max_length=32, pattern=r"^[a-z_]+$")
    reason: str = Field("", max_length=200)
    model: str | None = Field(None, max_length=64)
    version: int | None = Field(None, ge=1, le=2**31 - 1)
    source: str = Field("", max_length=64)
    captured_at: float | None = None
    predictions: list[PredictionIn] = Field(default_factory=list, max_length=300)


class IngestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Ingested:
    sample_id: int
    stored: bool  # False: a duplicate, `duplicate` says of what
    duplicate: str | None = None


@dataclass(frozen=True)
class IngestLimits:
    max_pixels: int
    dedup_distance: int


def clip_predictions(preds: list[PredictionIn], width: int, height: int) -> tuple[list[dict[str, Any]], int]:
    """A device's boxes clipped to its image (rounding and letterboxing leave them poking out a little); a box
    with nothing left inside is dropped. Returns the kept predictions and how many were dropped."""
    kept, dropped = [], 0
    for p in preds:
        d = p.model_dump()
        if p.box is not None:
            x1, y1, x2, y2 = p.box
            box = [
                min(max(x1, 0.0), width),
                min(max(y1, 0.0), height),
                min(max(x2, 0.0), width),
                min(max(y2, 0.0), height),
            ]
            if box[2] <= box[0] or box[3] <= box[1]:
                dropped += 1
                continue
            d["box"] = box
        kept.append(d)
    return kept, dropped


async def ingest(
    session: Session,
    device_id: str,
    data: bytes,
    meta: SampleMeta,
    idempotency_key: str | None,
    index: PhashIndex,
    blobs: Blobs,
    limits: IngestLimits,
) -> Ingested:
    sha = hashlib.sha256(data).hexdigest()
    if idempotency_key and idempotency_key != sha:
        raise IngestError(422, "Idempotency-Key must be the sha256 of the image bytes")
    existing = session.exec(select(Sample).where(Sample.sha256 == sha)).first()
    if existing is not None:
        return Ingested(int(existing.id or 0), False, "already received")
    try:
        img, jpeg = await asyncio.to_thread(sanitize, data, limits.max_pixels)
    except ImageRejected as exc:
        raise IngestError(exc.status, str(exc)) from None
    h = phash(img)
    dist, near = index.catch_up(session).nearest(h)
    if near is not None and dist <= limits.dedup_distance:
        twin = session.get(Sample, near)
        if twin is not None:
            return Ingested(int(twin.id or 0), False, f"near-duplicate (Hamming {dist}) of sample {near}")
    predictions, outside = clip_predictions(meta.predictions, img.shape[1], img.shape[0])
    reason = meta.reason if not outside else f"{meta.reason}; {outside} box(es) outside the image dropped"[:200]
    name = f"{uuid.uuid4().hex}.jpg"
    try:
        await asyncio.to_thread(blobs.put_bytes, image_key(name), jpeg)
    except Exception as exc:  # object storage down: refuse, the device keeps the sample and retries
        log.warning("could not store a sample from %s: %s", device_id, exc)
        raise IngestError(503, "sample storage is unavailable; retry later") from exc
    row = Sample(
        device_id=device_id,
        sha256=sha,
        phash=f"{h:016x}",
        model=meta.model,
        version=meta.version,
        strategy=meta.strategy,
        reason=reason,
        source=meta.source,
        captured_at=datetime.fromtimestamp(meta.captured_at, timezone.utc) if meta.captured_at else None,
        width=img.shape[1],
        height=img.shape[0],
        image=name,
        bytes=len(jpeg),
        predictions_json=json.dumps(predictions),
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # the same bytes raced in from a retry: keep the first
        session.rollback()
        await asyncio.to_thread(blobs.delete, image_key(name))
        first = session.exec(select(Sample).where(Sample.sha256 == sha)).first()
        if first is None:
            raise
        return Ingested(int(first.id or 0), False, "already received")
    session.refresh(row)
    return Ingested(int(row.id or 0), True)
