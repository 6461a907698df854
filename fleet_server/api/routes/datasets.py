"""Datasets: list and show versions, import a COCO / YOLO folder (as a tar upload), export one. Admin only.

An import is validated whole before anything is stored; its errors name the file (inside the upload)
and the line. The upload is capped while it streams and unpacked with tar's `data` filter (no links, no
paths out of the folder), with caps on member count and unpacked size.
"""

from __future__ import annotations

import asyncio
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import FileResponse

from fleet_server.api.deps import (
    OperatorDep,
    ServicesDep,
    SessionDep,
    Version,
    ViewerDep,
    binary,
    folder_as_targz,
    get_services,
    receive_upload,
)
from fleet_server.audit import audit
from fleet_server.services import Services
from model_zoo.datasets.formats import export_coco, export_yolo, load_coco, load_yolo
from model_zoo.datasets.store import NAME, DatasetError, DatasetStore

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
MAX_MEMBERS = 200_000


def _store(services: Services) -> DatasetStore:
    return services.datasets


@router.get("")
def list_datasets(services: ServicesDep, _: ViewerDep) -> list[dict[str, Any]]:
    st = _store(services)
    return [st.load(n).summary() for n in st.names()]


@router.get("/{name}/versions")
def list_versions(name: str, services: ServicesDep, _: ViewerDep) -> list[dict[str, Any]]:
    st = _store(services)
    vs = st.versions(name)
    if not vs:
        raise HTTPException(404, f"no dataset named {name!r}")
    return [st.load(name, v).summary() for v in vs]


@router.get("/{name}/versions/{version}")
def show_version(name: str, version: Version, services: ServicesDep, _: ViewerDep) -> dict[str, Any]:

    try:
        return _store(services).load(name, version).summary()
    except DatasetError as exc:
        raise HTTPException(404, str(exc)) from None


def _unpack(archive: Path, dest: Path, max_unpacked: int) -> Path:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            if len(members) > MAX_MEMBERS:
                raise HTTPException(413, f"the archive has {len(members)} entries; the limit is {MAX_MEMBERS}")
            total = sum(m.size for m in members if m.isfile())
            if total > max_unpacked:
                raise HTTPException(413, f"the archive unpacks to {total} bytes; the limit is {max_unpacked}")
            tf.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise HTTPException(422, f"the upload is not a readable tar archive: {exc}") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest  # one top folder, or the root


def _import(store, name: str, fmt: str, root: Path, val_fraction: float, note: str):

    if fmt == "coco":
        ann = next((p for p in (root / "annotations.json", *sorted(root.glob("*.json"))) if p.is_file()), None)
        if ann is None:
            raise HTTPException(422, "a COCO upload needs a .json annotation file at its top level")
        classes, samples = load_coco(ann)
    else:
        classes, samples = load_yolo(root)
    parent = store.load(name) if store.versions(name) else None
    if parent is not None and parent.classes != tuple(classes[: len(parent.classes)]):
        raise HTTPException(409, f"{name} has classes {list(parent.classes)}; the upload has {classes}")
    return store.create(name, "detect", classes, samples, val_fraction, parent, note=note)


@router.post("/{name}/import", status_code=status.HTTP_201_CREATED)
async def import_dataset(
    name: str,
    request: Request,
    session: SessionDep,
    who: OperatorDep,
    format: str = Query(..., pattern="^(coco|yolo)$"),
    val_fraction: float = Query(0.2, gt=0, lt=1),
) -> dict[str, Any]:

    if not NAME.match(name):
        raise HTTPException(422, "dataset name must be 1-64 of a-z 0-9 _ . - starting with a letter or digit")
    services = get_services(request)
    limit = services.settings.max_upload_bytes
    tmp, _sha, length = await receive_upload(request)
    work = Path(tempfile.mkdtemp(prefix="import-", dir=services.store.root / "tmp"))
    try:
        if length == 0:
            raise HTTPException(422, "empty upload: send a tar (or tar.gz) of the dataset folder as the body")
        root = await asyncio.to_thread(_unpack, tmp, work, limit * 4)
        try:
            dv = await asyncio.to_thread(
                _import, _store(services), name, format, root, val_fraction, f"import {format}"
            )
        except DatasetError as exc:
            raise HTTPException(422, str(exc).replace(f"{work}/", "").replace(str(work), ".")) from None
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    audit(session, who.name, "dataset.import", dv.ref, f"{len(dv.samples)} samples, {format}")
    session.commit()
    return dv.summary()


@router.get(
    "/{name}/versions/{version}/export", response_class=FileResponse, responses=binary("application/gzip", "A .tar.gz")
)
def export_dataset(
    name: str,
    version: Version,
    services: ServicesDep,
    _: ViewerDep,
    format: str = Query("coco", pattern="^(coco|yolo)$"),
    split: str | None = Query(None, pattern="^(train|val)$"),
) -> FileResponse:

    try:
        dv = _store(services).load(name, version)
    except DatasetError as exc:
        raise HTTPException(404, str(exc)) from None
    work = Path(tempfile.mkdtemp(prefix="export-", dir=services.store.root / "tmp"))
    folder = work / f"{name}-v{version}-{format}"
    (export_coco if format == "coco" else export_yolo)(dv, folder, split)
    return folder_as_targz(folder, work)
