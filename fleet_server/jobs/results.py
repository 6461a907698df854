"""The server's side of the model zoo: turn what a job built into registered, signed versions."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sqlmodel import Session

from edge_agent.protocol.manifest import ArtifactEntry, DecoderSpec, InputSpec
from fleet_server.audit import audit
from fleet_server.blobs import Remote
from fleet_server.jobs.tables import Job
from fleet_server.keys import KeyRing
from fleet_server.registry.service import register_artifacts
from fleet_server.registry.tables import ModelVersion
from fleet_server.rollouts.service import RolloutCreate, create_rollout
from fleet_server.storage import LocalStore

log = logging.getLogger(__name__)


def store_checkpoint(data_dir: Path, src: Path, name: str, version: int, remote: Remote | None = None) -> str:
    """Keep the weights (not the optimizer state) of a version, for fine-tuning and recompiling; in the bucket
    too when there is one (under the same relative path: a job on any host fetches it from there)."""
    import torch

    ck = torch.load(src, map_location="cpu", weights_only=False)
    ck.pop("optimizer", None)
    rel = Path("checkpoints") / name / f"{version}.pt"
    dest = data_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, dest)
    if remote is not None:
        remote.put_file(rel.as_posix(), dest)
    return str(rel)


def register_compiled(
    session: Session,
    keys: KeyRing,
    store: LocalStore,
    data_dir: Path,
    name: str,
    report: dict[str, Any],
    checkpoint: Path,
    lineage: dict[str, str],
    valid_days: int,
) -> ModelVersion:
    """A new version of `name` carrying every target the compile built and accepted, with its table."""
    artifacts: dict[str, ArtifactEntry] = {}
    for r in report["results"]:
        if r["status"] != "built":
            continue
        sha, path = r["sha256"], Path(r["path"])
        store.add_copy(path, sha)
        artifacts[r["target"]] = ArtifactEntry(
            url=f"/api/v1/artifacts/{sha}",
            sha256=sha,
            length=int(r["size"]),
            latency_ms=r["latency_p50_ms"],
            latency_p99_ms=r["latency_p99_ms"],
            measured_on=r["measured_on"],
            accuracy=r["accuracy"],
            accuracy_delta=r["delta"],
        )
    recommended = {dc: t for dc, t in report["recommended"].items() if t in artifacts}
    task = report["task"]
    spec = InputSpec.model_validate(report["input_spec"])
    dec = DecoderSpec(type="yolov8" if task == "detect" else "classify")
    mv = register_artifacts(
        session,
        keys,
        name,
        task,
        list(report["classes"]),
        spec,
        dec,
        artifacts,
        valid_days,
        recommended=recommended,
        lineage=lineage,
        report=report,
    )
    mv.checkpoint = store_checkpoint(data_dir, checkpoint, name, mv.version, store.blobs.remote)
    session.add(mv)
    return mv


def offer_rollout(session: Session, params: dict[str, Any], mv: ModelVersion) -> dict[str, Any]:
    """A retrained version that passed its gate: start its canary rollout (policy `auto`) or wait for
    `edgeloop flywheel approve JOB` (policy `approve`)."""
    mode = params.get("rollout", "approve")
    if mode == "auto":
        rollout = start_rollout(session, params, mv.model, mv.version, actor="flywheel")
        return {"rollout": rollout, "summary": f"registered {mv.model}:{mv.version}; canary rollout {rollout} started"}
    if mode == "approve":
        return {"awaiting_approval": True, "summary": f"registered {mv.model}:{mv.version}; rollout awaits approval"}
    return {}


def start_rollout(session: Session, params: dict[str, Any], model: str, version: int, actor: str) -> int:

    req = RolloutCreate(
        model=model,
        version=version,
        selector=params.get("selector", "all"),
        canary=params.get("canary", "1"),
        waves=[w for w in str(params.get("waves", "100%")).split(",") if w],
        bake_s=float(params.get("bake_s", 600.0)),
        skip_incompatible=True,
    )
    rollout, _ = create_rollout(session, req, actor)
    audit(session, actor, "flywheel.rollout", f"{model}:{version}", json.dumps({"rollout": rollout.id}))
    session.commit()
    return int(rollout.id or 0)


def job_result_registrar(settings: Any, keys: KeyRing, store: LocalStore):
    """The runner's callback: register a finished job's output, return the job's result summary."""

    def register(session: Session, job: Job, result: dict[str, Any]) -> dict[str, Any]:
        params = json.loads(job.params_json)
        if job.kind == "synthesize":
            d = result["dataset"]
            return {"dataset": f"{d['name']}:{d['version']}", "summary": f"dataset {d['name']}:{d['version']}", **d}
        gate = result.get("gate")
        if gate is not None and not gate["passed"]:
            shutil.rmtree(Path(result["compiled"]), ignore_errors=True)
            return {"rejected": True, "gate": gate, "summary": f"candidate rejected: {gate['reason']}"}
        lineage = {"dataset": params["dataset_ref"], "job": str(job.id)}
        if params.get("from_ref"):
            lineage["fine_tuned_from"] = params["from_ref"]
        if params.get("holdout_dataset"):
            lineage["holdout"] = params["holdout_dataset"]
        if job.kind == "compile":
            lineage["recompiled_from"] = params["source_ref"]
        mv = register_compiled(
            session,
            keys,
            store,
            settings.data_dir,
            params["name"],
            result["report"],
            Path(result["checkpoint"]),
            lineage,
            settings.manifest_valid_days,
        )
        session.commit()
        ref = f"{mv.model}:{mv.version}"
        out: dict[str, Any] = {
            "model": ref,
            "summary": f"registered {ref}",
            "recommended": result["report"]["recommended"],
        }
        if "training" in result:
            out["training"] = result["training"]
        if gate is not None:
            out["gate"] = gate
            out.update(offer_rollout(session, params, mv))
        shutil.rmtree(Path(result["compiled"]), ignore_errors=True)  # the artifacts now live in the store
        log.info("job %s registered %s", job.id, ref)
        return out

    return register
