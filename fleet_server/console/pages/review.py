"""The flywheel's pages: hard samples to review, datasets, jobs; and people and the audit log."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, select

from fleet_server.api.deps import MAX_ID, Id, ServicesDep, SessionDep
from fleet_server.audit import entries
from fleet_server.console import queries
from fleet_server.console.base import ConsoleAdmin, ConsoleUser, get_or_404, render
from fleet_server.flywheel.policy import policies_public
from fleet_server.flywheel.samples import filtered_samples, labelled_samples, sample_public
from fleet_server.flywheel.tables import Sample
from fleet_server.jobs.runner import log_tail
from fleet_server.jobs.service import job_public
from fleet_server.jobs.tables import Job
from fleet_server.services import Services
from fleet_server.users.service import list_users
from fleet_server.webhooks.service import delivery_public
from fleet_server.webhooks.service import public as webhook_public
from fleet_server.webhooks.tables import EVENTS, Webhook, WebhookDelivery

router = APIRouter(prefix="/console", include_in_schema=False)
SAMPLE_FILTERS = ("device", "model", "strategy", "state", "label")


@router.get("/samples")
def samples(
    request: Request, session: SessionDep, who: ConsoleUser, page: int = Query(1, ge=1, le=1_000_000)
) -> HTMLResponse:
    f = {k: request.query_params.get(k, "")[:64] for k in SAMPLE_FILTERS}
    if "state" not in request.query_params:
        f["state"] = "new"
    given: dict[str, Any] = {k: v for k, v in f.items() if v}
    rows, total = filtered_samples(session, **given, limit=60, offset=(page - 1) * 60)
    return render(
        request,
        who,
        "samples.html",
        samples=[sample_public(s) for s in rows],
        total=total,
        f=f,
        page=page,
        pages=max(1, (total + 59) // 60),
        base_qs=urlencode({k: v for k, v in f.items() if v}),
        nav="samples",
    )


@router.get("/samples/{sample_id}")
def sample(request: Request, sample_id: Id, session: SessionDep, who: ConsoleUser) -> HTMLResponse:
    s = get_or_404(session, Sample, sample_id, f"sample {sample_id}")
    classes = queries.sample_classes(session, s)
    nxt = queries.next_new_sample(session, sample_id)
    return render(request, who, "sample.html", s=sample_public(s), classes=classes, next_id=nxt, nav="samples")


@router.get("/datasets")
def datasets(request: Request, session: SessionDep, services: ServicesDep, who: ConsoleUser) -> HTMLResponse:
    store = services.datasets
    out = [store.load(name, v).summary() for name in store.names() for v in reversed(store.versions(name))]
    reviewed = len(labelled_samples(session, unused_only=True))
    return render(request, who, "datasets.html", datasets=out, names=store.names(), reviewed=reviewed, nav="datasets")


@router.get("/jobs")
def jobs(request: Request, session: SessionDep, who: ConsoleUser) -> HTMLResponse:
    rows = [job_public(j) for j in queries.recent_jobs(session)]
    return render(request, who, "jobs.html", jobs=rows, policies=policies_public(session), nav="jobs")


def _job_ctx(services: Services, session: Session, job_id: int) -> dict[str, Any]:
    j = get_or_404(session, Job, job_id, f"job {job_id}")
    log = log_tail(services.jobs_dir / str(job_id), 5000)
    epochs = [e for e in log if e.get("event") == "epoch"]
    lines = [e for e in log if e.get("event") != "epoch"][-40:]
    return {"j": job_public(j), "epochs": epochs, "lines": lines}


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: Id, session: SessionDep, services: ServicesDep, who: ConsoleUser) -> HTMLResponse:
    return render(request, who, "job.html", nav="jobs", **_job_ctx(services, session, job_id))


@router.get("/jobs/{job_id}/live")
def job_live(
    request: Request, job_id: Id, session: SessionDep, services: ServicesDep, who: ConsoleUser
) -> HTMLResponse:
    return render(request, who, "_job_live.html", **_job_ctx(services, session, job_id))


@router.get("/users")
def users(request: Request, session: SessionDep, who: ConsoleAdmin) -> HTMLResponse:
    return render(request, who, "users.html", users=list_users(session), nav="users")


@router.get("/webhooks")
def webhooks_page(request: Request, session: SessionDep, who: ConsoleAdmin) -> HTMLResponse:
    hooks = session.exec(select(Webhook).order_by(col(Webhook.id))).all()
    recent = session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.id).desc()).limit(50)).all()
    return render(
        request,
        who,
        "webhooks.html",
        hooks=[webhook_public(session, h) for h in hooks],
        deliveries=[delivery_public(d) for d in recent],
        events=EVENTS,
        nav="webhooks",
    )


@router.get("/audit")
def audit(
    request: Request,
    session: SessionDep,
    who: ConsoleUser,
    actor: str = "",
    before_id: int | None = Query(None, ge=1, le=MAX_ID),
) -> HTMLResponse:
    rows = entries(session, actor=actor or None, before_id=before_id, limit=100)
    return render(request, who, "audit.html", rows=rows, actor=actor, nav="audit")
