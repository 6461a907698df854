"""Models: push a version (raw ONNX body, metadata in the query), list, show."""

from __future__ import annotations

import logging
import re

from fastapi import APIRouter, HTTPException, Query, Request, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from fleet_server.api.deps import OperatorDep, ServicesDep, SessionDep, Version, ViewerDep, receive_upload
from fleet_server.registry.service import PushError, register_version, validate_onnx, version_public
from fleet_server.registry.tables import ModelVersion, ModelVersionPublic

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/models", tags=["models"])
NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def _floats3(text: str, what: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise HTTPException(422, f"{what} must be three comma-separated numbers") from None
    if len(vals) != 3:
        raise HTTPException(422, f"{what} must be three comma-separated numbers")
    return vals


@router.post("/{name}/versions", status_code=status.HTTP_201_CREATED, response_model=ModelVersionPublic)
async def push(
    name: str,
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    _: OperatorDep,
    task: str = Query(..., description="classify or detect"),
    classes: str = Query(..., description="comma-separated class names in output order"),
    decoder: str | None = Query(None, description="classify | yolov8 (default from task)"),
    input_size: str | None = Query(None, description="WxH the model must take, e.g. 640x640"),
    resize: str = Query("stretch", pattern="^(stretch|letterbox)$"),
    color: str = Query("RGB", pattern="^(RGB|BGR)$"),
    mean: str = Query("0,0,0"),
    std: str = Query("1,1,1"),
) -> ModelVersionPublic:
    if not re.match(NAME, name):
        raise HTTPException(422, "model name must be 1-64 of a-z 0-9 _ . - starting with a letter or digit")
    size = None
    if input_size:
        m = re.match(r"^(\d+)x(\d+)$", input_size)
        if not m:
            raise HTTPException(422, "input_size must look like 640x640")
        size = (int(m.group(2)), int(m.group(1)))
    tmp, sha, length = await receive_upload(request, "model")
    try:
        if length == 0:
            raise PushError("empty upload: send the ONNX file as the request body")
        class_list = [c.strip() for c in classes.split(",")]
        spec, dec = validate_onnx(
            tmp, task, decoder, class_list, size, resize, color, _floats3(mean, "mean"), _floats3(std, "std")
        )
        mv = register_version(
            session,
            services.keys,
            name,
            task,
            class_list,
            spec,
            dec,
            sha,
            length,
            services.settings.manifest_valid_days,
        )
        try:
            services.store.commit(tmp, sha)
        except Exception as exc:  # object storage down: nothing is registered, the push can be repeated
            log.warning("could not store the artifact of %s: %s", name, exc)
            raise PushError(f"artifact storage is unavailable ({type(exc).__name__}); push again later") from exc
        session.commit()
    except PushError as exc:
        session.rollback()
        unavailable = str(exc).startswith("artifact storage is unavailable")
        raise HTTPException(503 if unavailable else 422, str(exc)) from exc
    except IntegrityError as exc:  # another push of the same model took this version number first
        session.rollback()
        raise HTTPException(409, f"a concurrent push registered {name} first; push again") from exc
    finally:
        tmp.unlink(missing_ok=True)
    session.refresh(mv)
    log.info("registered %s:%d (%d bytes, sha256 %s)", mv.model, mv.version, length, sha[:12])
    return version_public(session, mv)


@router.get("", response_model=list[ModelVersionPublic])
def list_versions(session: SessionDep, _: ViewerDep) -> list[ModelVersionPublic]:
    rows = session.exec(select(ModelVersion).order_by(ModelVersion.model, col(ModelVersion.version).desc())).all()
    return [version_public(session, mv) for mv in rows]


@router.get("/{name}/versions/{version}", response_model=ModelVersionPublic)
def show(name: str, version: Version, session: SessionDep, _: ViewerDep) -> ModelVersionPublic:
    mv = session.exec(select(ModelVersion).where(ModelVersion.model == name, ModelVersion.version == version)).first()
    if mv is None:
        raise HTTPException(404, f"no model version {name}:{version}")
    return version_public(session, mv)
