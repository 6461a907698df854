"""Hard samples out to an outside labelling tool (COCO or YOLO, CVAT and Label Studio read either) and
their labels back (COCO). The folder layouts are the model zoo's (`model_zoo.datasets.formats`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session

from fleet_server.blobs import Blobs
from fleet_server.flywheel.samples import LabelIn, ReviewError, apply_review, image_key
from fleet_server.flywheel.tables import ReviewAction, Sample
from model_zoo.datasets.formats import LabelledImage, coco_labels, write_coco, write_yolo
from model_zoo.datasets.store import DatasetError


def export_samples(rows: list[Sample], folder: Path, fmt: str, blobs: Blobs, classes: list[str] | None = None) -> Path:
    """`folder` with images/<id>.jpg and the labels: pre-annotations for new samples, reviewed labels otherwise.
    `classes` fixes the category order (default: the labels seen, sorted); labels without a box or outside
    `classes` are left out."""
    labelled = [(s, json.loads(s.labels_json) if s.labels_json else json.loads(s.predictions_json)) for s in rows]
    names = classes or sorted({lab["label"] for _, labs in labelled for lab in labs})
    index = {n: i for i, n in enumerate(names)}
    items = []
    for s, labs in labelled:
        kept = [lab for lab in labs if lab.get("box") is not None and lab["label"] in index]
        scores = [float(lab["score"]) for lab in kept] if kept and all("score" in lab for lab in kept) else None
        items.append(
            LabelledImage(
                image_id=int(s.id or 0),
                file_name=f"{s.id}.jpg",
                data=blobs.read(image_key(s.image)),
                width=s.width,
                height=s.height,
                boxes=[tuple(lab["box"]) for lab in kept],
                labels=[index[lab["label"]] for lab in kept],
                scores=scores,
            )
        )
    if fmt == "yolo":
        return write_yolo(folder, items, names)
    write_coco(folder, items, names, decimals=None)
    return folder


def import_labels(session: Session, doc: Any) -> list[Sample]:
    """COCO labels for exported samples (file_name `<id>.jpg`): each listed sample's labels are replaced and it
    becomes `corrected`. Validated whole first: an unknown image or a box outside it changes nothing."""
    try:
        by_file = coco_labels(doc)
    except DatasetError as exc:
        raise ReviewError(str(exc)) from None
    updates = []
    for file_name, labs in by_file.items():
        stem = file_name.rsplit("/", 1)[-1].split(".")[0]
        s = session.get(Sample, int(stem)) if stem.isdigit() else None
        if s is None:
            raise ReviewError(f"image {file_name!r} is not an exported sample (<id>.jpg)")
        labels = [LabelIn(label=name, box=list(box)) for name, box in labs]
        try:
            apply_review(s, ReviewAction.CORRECT, labels, 0.0)
        except ReviewError as exc:
            raise ReviewError(f"sample {s.id}: {exc}") from None
        updates.append(s)
    return updates
