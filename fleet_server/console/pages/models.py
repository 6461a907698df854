"""Models with their signed manifests, and rollouts."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from edge_agent.protocol.signing import SignedManifest, verify_signed_manifest
from fleet_server.api.deps import Id, ServicesDep, SessionDep, Version
from fleet_server.audit import entries
from fleet_server.console import queries
from fleet_server.console.base import ConsoleUser, get_or_404, render
from fleet_server.registry.service import version_public
from fleet_server.rollouts.service import DEFAULT_GATES, status
from fleet_server.rollouts.tables import Rollout

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/models")
def models(request: Request, session: SessionDep, who: ConsoleUser) -> HTMLResponse:
    versions = [version_public(session, mv) for mv in queries.model_versions(session)]
    return render(request, who, "models.html", versions=versions, nav="models")


@router.get("/models/{name}/{version}")
def model_version(
    request: Request, name: str, version: Version, session: SessionDep, services: ServicesDep, who: ConsoleUser
) -> HTMLResponse:
    mv = queries.model_version(session, name, version)
    if mv is None:
        raise HTTPException(404, f"no model version {name}:{version}")
    try:
        envelope = SignedManifest.model_validate_json(mv.signed_manifest)
        m = verify_signed_manifest(envelope, services.keys.root_public)
        signature, sig_ok = f"verified against the root key; expires {m.expires_at:%Y-%m-%d}", True
    except Exception as exc:  # noqa: BLE001 - shown on the page, never hidden
        signature, sig_ok = f"does not verify: {exc}", False
    return render(
        request,
        who,
        "model.html",
        mv=version_public(session, mv),
        signed=json.loads(mv.signed_manifest),
        running=queries.running(session, name, version),
        nav="models",
        signature=signature,
        sig_ok=sig_ok,
    )


@router.get("/rollouts")
def rollouts(request: Request, session: SessionDep, who: ConsoleUser) -> HTMLResponse:
    return render(
        request,
        who,
        "rollouts.html",
        rollouts=[status(session, r) for r in queries.recent_rollouts(session)],
        versions=queries.version_refs(session),
        default_gates=DEFAULT_GATES,
        nav="rollouts",
    )


def _rollout_ctx(session: Session, rollout_id: int) -> dict[str, Any]:
    r = get_or_404(session, Rollout, rollout_id, f"rollout {rollout_id}")
    audit = entries(session, target=f"rollout/{rollout_id}", limit=1000, oldest_first=True)
    return {"r": status(session, r), "gate_rows": queries.gate_rows(session, r), "audit": audit}


@router.get("/rollouts/{rollout_id}")
def rollout(request: Request, rollout_id: Id, session: SessionDep, who: ConsoleUser) -> HTMLResponse:
    return render(request, who, "rollout.html", nav="rollouts", **_rollout_ctx(session, rollout_id))


@router.get("/rollouts/{rollout_id}/live")
def rollout_live(request: Request, rollout_id: Id, session: SessionDep, who: ConsoleUser) -> HTMLResponse:
    return render(request, who, "_rollout_live.html", **_rollout_ctx(session, rollout_id))
