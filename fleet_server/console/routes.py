"""Console pages under /console. Reads come from `queries.py` and the API's own serializers; actions are API calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import Session, col, select

from fleet_server.api.deps import SESSION_COOKIE, Principal, SessionDep, _principal
from fleet_server.console import queries
from fleet_server.users.tables import ROLE_RANK

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _size(n: float | None) -> str:
    if not n:
        return "-"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{int(n)} B"


templates.env.filters["size"] = _size
router = APIRouter(prefix="/console", include_in_schema=False)


class NeedLogin(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def _who(request: Request, session: Session) -> Principal:
    try:
        who = _principal(request, session)
    except HTTPException as exc:
        raise NeedLogin(str(request.url.path)) from exc
    if who.kind == "device":
        raise HTTPException(403, "device credentials cannot open the console")
    return who


def _get(session: Session, table: Any, key: Any, what: str) -> Any:
    """The row, or a 404 that names what is missing."""
    row = session.get(table, key)
    if row is None:
        raise HTTPException(404, f"no {what}")
    return row


def render(request: Request, who: Principal, name: str, **ctx: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "who": who,
            "can_operate": ROLE_RANK.get(who.role, -1) >= ROLE_RANK["operator"],
            "is_admin": who.role == "admin",
            **ctx,
        },
    )


# -- login ---------------------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request, next: str = "/console/fleet", error: str = "") -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": error})


def _safe_next(url: str) -> str:
    return url if url.startswith("/console/") and "//" not in url and "\\" not in url else "/console/fleet"


@router.post("/login")
def login_submit(
    request: Request,
    session: SessionDep,
    name: str = Form(..., max_length=64),
    password: str = Form(..., max_length=1024),
    next: str = Form("/console/fleet"),
) -> Response:
    from fleet_server.api.users_api import do_login

    try:
        token, row, _ = do_login(session, name, password)
    except HTTPException as exc:
        target = f"/console/login?error={quote(str(exc.detail))}&next={quote(_safe_next(next))}"
        return RedirectResponse(target, status_code=303)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=12 * 3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or request.app.state.settings.base_url.startswith("https://"),
        path="/",
    )
    return resp


@router.post("/logout")
def logout(request: Request, session: SessionDep, csrf: str = Form("")) -> Response:
    from fleet_server.keys import same
    from fleet_server.users.service import logout as end
    from fleet_server.users.service import resolve

    token = request.cookies.get(SESSION_COOKIE)
    found = resolve(session, token) if token else None
    if found is not None and csrf and same(csrf, found[1].csrf):
        end(session, token or "")
        session.commit()
    resp = RedirectResponse("/console/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# -- fleet ---------------------------------------------------------------------------------------
def _fleet_filter(q: str, state: str, tag: str, model: str, page: int) -> queries.FleetFilter:
    return queries.FleetFilter(q=q[:64], state=state[:16], tag=tag[:130], model=model[:80], page=max(1, page))


@router.get("", include_in_schema=False)
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/console/fleet", status_code=303)


@router.get("/fleet")
def fleet(
    request: Request, session: SessionDep, q: str = "", state: str = "", tag: str = "", model: str = "", page: int = 1
) -> HTMLResponse:
    who = _who(request, session)
    f = _fleet_filter(q, state, tag, model, page)
    return render(
        request,
        who,
        "fleet.html",
        f=f,
        fp=queries.fleet_page(session, f),
        tags=queries.tag_values(session),
        nav="fleet",
    )


@router.get("/fleet/rows")
def fleet_rows(
    request: Request, session: SessionDep, q: str = "", state: str = "", tag: str = "", model: str = "", page: int = 1
) -> HTMLResponse:
    """The part of the fleet page that polling replaces: counts, rows, pager."""
    who = _who(request, session)
    f = _fleet_filter(q, state, tag, model, page)
    return render(request, who, "_fleet_rows.html", f=f, fp=queries.fleet_page(session, f))


# -- device --------------------------------------------------------------------------------------
@router.get("/devices/{device_id}")
def device(request: Request, device_id: str, session: SessionDep) -> HTMLResponse:
    from fleet_server.api.devices import to_public
    from fleet_server.flywheel.tables import Sample
    from fleet_server.models import Device
    from fleet_server.rollouts.tables import AuditLog

    who = _who(request, session)
    d = _get(session, Device, device_id, f"device {device_id!r}")
    samples = session.exec(
        select(Sample).where(Sample.device_id == device_id).order_by(col(Sample.id).desc()).limit(12)
    ).all()
    events = session.exec(
        select(AuditLog).where(col(AuditLog.target).contains(device_id)).order_by(col(AuditLog.id).desc()).limit(20)
    ).all()
    caps = json.loads(d.capabilities_json) if d.capabilities_json else {}
    kind = "-"
    if caps:
        from edge_agent.capabilities import device_kind
        from edge_agent.protocol.messages import Capabilities

        kind = device_kind(Capabilities.model_validate(caps))
    return render(
        request,
        who,
        "device.html",
        d=to_public(d),
        caps=caps,
        kind=kind,
        revoked=d.token_hash == "revoked",
        deployments=queries.deployments(session, device_id),
        samples=samples,
        events=events,
        nav="fleet",
    )


@router.get("/devices/{device_id}/live")
def device_live(request: Request, device_id: str, session: SessionDep) -> HTMLResponse:
    from fleet_server.api.devices import to_public
    from fleet_server.models import Device

    who = _who(request, session)
    d = _get(session, Device, device_id, f"device {device_id!r}")
    return render(request, who, "_device_live.html", d=to_public(d))


@router.get("/devices/{device_id}/series")
def device_series(request: Request, device_id: str, session: SessionDep, minutes: float = 60) -> JSONResponse:
    _who(request, session)
    return JSONResponse(queries.series(session, device_id, max(1.0, min(minutes, 7 * 24 * 60))))


# -- models --------------------------------------------------------------------------------------
@router.get("/models")
def models(request: Request, session: SessionDep) -> HTMLResponse:
    from fleet_server.api.models import to_public
    from fleet_server.models import ModelVersion

    who = _who(request, session)
    rows = session.exec(select(ModelVersion).order_by(col(ModelVersion.model), col(ModelVersion.version).desc())).all()
    return render(request, who, "models.html", versions=[to_public(session, mv) for mv in rows], nav="models")


@router.get("/models/{name}/{version}")
def model_version(request: Request, name: str, version: int, session: SessionDep) -> HTMLResponse:
    from fleet_server.api.models import to_public
    from fleet_server.models import Device, ModelVersion

    who = _who(request, session)
    mv = session.exec(select(ModelVersion).where(ModelVersion.model == name, ModelVersion.version == version)).first()
    if mv is None:
        raise HTTPException(404, f"no model version {name}:{version}")
    signed = json.loads(mv.signed_manifest)
    from edge_agent.protocol.signing import SignedManifest, verify_signed_manifest

    try:
        envelope = SignedManifest.model_validate_json(mv.signed_manifest)
        m = verify_signed_manifest(envelope, request.app.state.keys.root_public)
        signature, sig_ok = f"verified against the root key; expires {m.expires_at:%Y-%m-%d}", True
    except Exception as exc:  # noqa: BLE001 - shown on the page, never hidden
        signature, sig_ok = f"does not verify: {exc}", False
    running = session.exec(select(Device.id).where(Device.model == name, Device.version == version).limit(1000)).all()
    return render(
        request,
        who,
        "model.html",
        mv=to_public(session, mv),
        signed=signed,
        running=running,
        nav="models",
        signature=signature,
        sig_ok=sig_ok,
    )


# -- rollouts ------------------------------------------------------------------------------------
@router.get("/rollouts")
def rollouts(request: Request, session: SessionDep) -> HTMLResponse:
    from fleet_server.models import ModelVersion
    from fleet_server.rollouts.service import DEFAULT_GATES, status
    from fleet_server.rollouts.tables import Rollout

    who = _who(request, session)
    rows = session.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(100)).all()
    versions = session.exec(
        select(ModelVersion.model, ModelVersion.version).order_by(col(ModelVersion.id).desc())
    ).all()
    return render(
        request,
        who,
        "rollouts.html",
        rollouts=[status(session, r) for r in rows],
        versions=[f"{m}:{v}" for m, v in versions],
        default_gates=DEFAULT_GATES,
        nav="rollouts",
    )


def _rollout_ctx(session: Session, rollout_id: int) -> dict[str, Any]:
    from fleet_server.rollouts.service import status
    from fleet_server.rollouts.tables import AuditLog, Rollout

    r = _get(session, Rollout, rollout_id, f"rollout {rollout_id}")
    audit = session.exec(
        select(AuditLog).where(AuditLog.target == f"rollout/{rollout_id}").order_by(col(AuditLog.id))
    ).all()
    return {"r": status(session, r), "gate_rows": queries.gate_rows(session, r), "audit": audit}


@router.get("/rollouts/{rollout_id}")
def rollout(request: Request, rollout_id: int, session: SessionDep) -> HTMLResponse:
    who = _who(request, session)
    return render(request, who, "rollout.html", nav="rollouts", **_rollout_ctx(session, rollout_id))


@router.get("/rollouts/{rollout_id}/live")
def rollout_live(request: Request, rollout_id: int, session: SessionDep) -> HTMLResponse:
    who = _who(request, session)
    return render(request, who, "_rollout_live.html", **_rollout_ctx(session, rollout_id))


# -- samples -------------------------------------------------------------------------------------
SAMPLE_FILTERS = ("device", "model", "strategy", "state", "label")


@router.get("/samples")
def samples(request: Request, session: SessionDep, page: int = 1) -> HTMLResponse:
    from fleet_server.api.samples_api import filtered_samples, sample_public

    who = _who(request, session)
    f = {k: request.query_params.get(k, "")[:64] for k in SAMPLE_FILTERS}
    if "state" not in request.query_params:
        f["state"] = "new"
    rows, total = filtered_samples(session, **{k: v for k, v in f.items() if v}, limit=60, offset=(page - 1) * 60)
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
def sample(request: Request, sample_id: int, session: SessionDep) -> HTMLResponse:
    from fleet_server.api.samples_api import sample_public
    from fleet_server.flywheel.tables import Sample
    from fleet_server.models import ModelVersion

    who = _who(request, session)
    s = _get(session, Sample, sample_id, f"sample {sample_id}")
    classes: list[str] = []
    if s.model and s.version is not None:
        mv = session.exec(
            select(ModelVersion).where(ModelVersion.model == s.model, ModelVersion.version == s.version)
        ).first()
        classes = json.loads(mv.classes_json) if mv else []
    nxt = session.exec(
        select(Sample.id).where(Sample.state == "new", col(Sample.id) != sample_id).order_by(col(Sample.id)).limit(1)
    ).first()
    return render(request, who, "sample.html", s=sample_public(s), classes=classes, next_id=nxt, nav="samples")


# -- datasets and jobs ---------------------------------------------------------------------------
@router.get("/datasets")
def datasets(request: Request, session: SessionDep) -> HTMLResponse:
    from fleet_server.zoo import datasets_dir
    from model_zoo.datasets.store import DatasetStore

    who = _who(request, session)
    store = DatasetStore(datasets_dir(request.app.state.settings.data_dir))
    out = [store.load(name, v).summary() for name in store.names() for v in reversed(store.versions(name))]
    from fleet_server.api.samples_api import labelled_samples

    reviewed = len(labelled_samples(session, unused_only=True))
    return render(request, who, "datasets.html", datasets=out, names=store.names(), reviewed=reviewed, nav="datasets")


@router.get("/jobs")
def jobs(request: Request, session: SessionDep) -> HTMLResponse:
    from fleet_server.api.jobs_api import job_public
    from fleet_server.jobs.tables import Job

    who = _who(request, session)
    from fleet_server.api.flywheel_api import list_policies

    rows = session.exec(select(Job).order_by(col(Job.id).desc()).limit(100)).all()
    policies = list_policies(session, who)
    return render(request, who, "jobs.html", jobs=[job_public(j) for j in rows], policies=policies, nav="jobs")


def _job_ctx(request: Request, session: Session, job_id: int) -> dict[str, Any]:
    from fleet_server.api.jobs_api import job_public
    from fleet_server.jobs.runner import log_tail
    from fleet_server.jobs.tables import Job

    j = _get(session, Job, job_id, f"job {job_id}")
    log = log_tail(request.app.state.jobs_dir / str(job_id), 5000)
    epochs = [e for e in log if e.get("event") == "epoch"]
    lines = [e for e in log if e.get("event") != "epoch"][-40:]
    return {"j": job_public(j), "epochs": epochs, "lines": lines}


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: int, session: SessionDep) -> HTMLResponse:
    who = _who(request, session)
    return render(request, who, "job.html", nav="jobs", **_job_ctx(request, session, job_id))


@router.get("/jobs/{job_id}/live")
def job_live(request: Request, job_id: int, session: SessionDep) -> HTMLResponse:
    who = _who(request, session)
    return render(request, who, "_job_live.html", **_job_ctx(request, session, job_id))


# -- people and the audit log --------------------------------------------------------------------
@router.get("/users")
def users(request: Request, session: SessionDep) -> HTMLResponse:
    from fleet_server.users.service import list_users

    who = _who(request, session)
    if who.role != "admin":
        raise HTTPException(403, "managing users needs the admin role")
    return render(request, who, "users.html", users=list_users(session), nav="users")


@router.get("/audit")
def audit(request: Request, session: SessionDep, actor: str = "", before_id: int | None = None) -> HTMLResponse:
    from fleet_server.rollouts.tables import AuditLog

    who = _who(request, session)
    q = select(AuditLog).order_by(col(AuditLog.id).desc()).limit(100)
    if actor:
        q = q.where(AuditLog.actor == actor)
    if before_id:
        q = q.where(col(AuditLog.id) < before_id)
    rows = session.exec(q).all()
    return render(request, who, "audit.html", rows=rows, actor=actor, nav="audit")


SECURITY_HEADERS = [
    # scripts and styles from this server only (style attributes carry progress-bar widths); no framing
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
     b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]  # fmt: skip


def security_headers(app: Any) -> Any:
    """ASGI middleware: the console's pages get a strict content security policy and no-framing headers."""

    async def middleware(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/console"):
            await app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware


def install(app: Any) -> None:
    """Mount the console, its static files and the login redirect."""
    from fastapi.staticfiles import StaticFiles

    app.add_middleware(security_headers)  # type: ignore[arg-type]
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=str(HERE / "static")), name="console-static")

    @app.exception_handler(NeedLogin)
    async def _to_login(request: Request, exc: NeedLogin) -> RedirectResponse:
        return RedirectResponse(f"/console/login?next={quote(exc.next_url)}", status_code=303)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/fleet", status_code=303)
