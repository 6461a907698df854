"""Model registry: validate an uploaded ONNX model, register a version, sign its manifest."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from sqlalchemy import func
from sqlmodel import Session, select

from edge_agent.decoders.base import decoder_for
from edge_agent.preprocess import Transform
from edge_agent.protocol.manifest import (
    TASK_DECODERS,
    ArtifactEntry,
    DecoderSpec,
    InputSpec,
    Manifest,
)
from edge_agent.protocol.signing import SignedManifest, sign_manifest
from edge_agent.runtimes import RuntimeError_, RuntimeOptions, create_runtime
from fleet_server.db import utcnow
from fleet_server.keys import KeyRing
from fleet_server.registry.measurements import fleet_rows
from fleet_server.registry.tables import Artifact, Model, ModelVersion, ModelVersionPublic
from fleet_server.webhooks import service as webhooks

log = logging.getLogger(__name__)


class PushError(ValueError):
    """The upload cannot become a model version; str() says what to fix."""


def validate_onnx(
    path: Path,
    task: str,
    decoder: str | None,
    classes: list[str],
    input_size: tuple[int, int] | None,
    resize: str,
    color: str,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[InputSpec, DecoderSpec]:
    if task not in TASK_DECODERS:
        raise PushError(f"task must be one of {sorted(TASK_DECODERS)}, got {task!r}")
    decoder = decoder or TASK_DECODERS[task][0]
    if decoder not in TASK_DECODERS[task]:
        raise PushError(f"task {task!r} needs decoder {' or '.join(TASK_DECODERS[task])}, got {decoder!r}")
    if not classes or any(not c.strip() for c in classes):
        raise PushError("--classes must list at least one non-empty class name")
    if len(set(classes)) != len(classes):
        raise PushError("--classes has duplicate names")
    head = path.read_bytes()[:64]
    if not head or head[:1] != b"\x08":  # ONNX ModelProto starts with field 1 (ir_version), varint
        raise PushError("the file is not an ONNX model (no ModelProto header)")
    try:
        import onnx

        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise PushError(f"the file is not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from exc
    try:
        rt = create_runtime("onnxruntime", path, RuntimeOptions(intra_threads=1))
    except RuntimeError_ as exc:
        raise PushError(str(exc)) from exc
    shape = tuple(rt.input_shape)
    if len(shape) != 4 or shape[0] != 1:
        raise PushError(f"model input must be (1, 3, H, W) or (1, H, W, 3), got {shape}")
    layout = "NCHW" if shape[1] == 3 else "NHWC" if shape[3] == 3 else None
    if layout is None:
        raise PushError(f"model input {shape} has no 3-channel axis")
    try:
        spec = InputSpec(
            shape=shape,
            layout=layout,
            color=color,
            resize=resize,
            mean=mean,
            std=std,
            dtype=str(rt.input_dtype),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise PushError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if input_size is not None and spec.hw != input_size:
        raise PushError(
            f"--input-size {input_size[1]}x{input_size[0]} differs from the model's input {spec.hw[1]}x{spec.hw[0]}"
        )
    dec = DecoderSpec(type=decoder)
    outputs = rt.run(np.zeros(shape, dtype=rt.input_dtype))
    h, w = spec.hw
    try:
        decoder_for(dec, len(classes))(outputs, Transform(1.0, 1.0, 0.0, 0.0, w, h))
    except ValueError as exc:
        raise PushError(f"output does not fit decoder {decoder!r} with {len(classes)} classes: {exc}") from exc
    rt.close()
    return spec, dec


def register_version(
    session: Session,
    keys: KeyRing,
    name: str,
    task: str,
    classes: list[str],
    spec: InputSpec,
    dec: DecoderSpec,
    sha256: str,
    length: int,
    valid_days: int,
) -> ModelVersion:
    entry = ArtifactEntry(url=f"/api/v1/artifacts/{sha256}", sha256=sha256, length=length)
    return register_artifacts(session, keys, name, task, classes, spec, dec, {"onnx-fp32": entry}, valid_days)


def register_artifacts(
    session: Session,
    keys: KeyRing,
    name: str,
    task: str,
    classes: list[str],
    spec: InputSpec,
    dec: DecoderSpec,
    artifacts: dict[str, ArtifactEntry],
    valid_days: int,
    recommended: dict[str, str] | None = None,
    lineage: dict[str, str] | None = None,
    report: dict | None = None,
    checkpoint: str | None = None,
) -> ModelVersion:
    """The next version of `name` with these artifacts, its manifest signed by the release key."""
    existing = session.get(Model, name)
    if existing is None:
        session.add(Model(name=name, task=task))
    elif existing.task != task:
        raise PushError(f"model {name!r} is a {existing.task} model; cannot add a {task} version")
    latest = session.exec(select(func.max(ModelVersion.version)).where(ModelVersion.model == name)).one()
    version = int(latest or 0) + 1
    now = utcnow().replace(microsecond=0)
    manifest = Manifest(
        model=name,
        version=version,
        task=task,
        classes=tuple(classes),
        input=spec,
        decoder=dec,
        artifacts=artifacts,
        created_at=now,
        expires_at=now + timedelta(days=valid_days),
        recommended=recommended or {},
        lineage={**(lineage or {})},
    )
    signed = sign_manifest(manifest, keys.release, keys.cert)
    mv = ModelVersion(
        model=name,
        version=version,
        task=task,
        decoder=dec.type,
        classes_json=json.dumps(classes),
        input_shape=json.dumps(list(spec.shape)),
        signed_manifest=signed.model_dump_json(),
        report_json=json.dumps(report) if report is not None else None,
        lineage_json=json.dumps(lineage) if lineage else None,
        checkpoint=checkpoint,
    )
    session.add(mv)
    session.flush()
    for target, entry in artifacts.items():
        session.add(Artifact(version_id=int(mv.id or 0), target=target, sha256=entry.sha256, length=entry.length))
    webhooks.emit(
        session, "model.registered",
        {"model": name, "version": version, "task": task, "targets": sorted(artifacts), "lineage": lineage or {}},
    )  # fmt: skip
    return mv


def rollback_manifest(
    mv: ModelVersion, keys: KeyRing, device_id: str, revision: int, valid: timedelta = timedelta(days=7)
) -> str:
    """A freshly signed copy of an older version's manifest that one device may install over a newer one, in
    the desired state of one revision: replayed to another device or in a later state, agents refuse it."""

    old = SignedManifest.model_validate_json(mv.signed_manifest).unverified_manifest()
    now = utcnow().replace(microsecond=0)
    bound = {"rollback": True, "rollback_device": device_id, "rollback_revision": revision}
    m = old.model_copy(update={**bound, "created_at": now, "expires_at": now + valid})
    return sign_manifest(Manifest.model_validate(m.model_dump()), keys.release, keys.cert).model_dump_json()


def version_public(session: Session, mv: ModelVersion) -> ModelVersionPublic:
    arts = session.exec(select(Artifact).where(Artifact.version_id == mv.id)).all()
    return ModelVersionPublic(
        name=mv.model,
        version=mv.version,
        task=mv.task,
        decoder=mv.decoder,
        classes=json.loads(mv.classes_json),
        input_shape=json.loads(mv.input_shape),
        created_at=mv.created_at,
        artifacts=[
            {"target": a.target, "sha256": a.sha256, "length": a.length, "url": f"/api/v1/artifacts/{a.sha256}"}
            for a in arts
        ],
        report=json.loads(mv.report_json) if mv.report_json else None,
        lineage=json.loads(mv.lineage_json) if mv.lineage_json else None,
        fleet_measurements=fleet_rows(session, int(mv.id or 0)),
    )
