"""The console under /console: login and logout here, the pages in `pages/`, reads in `queries.py`.
Every action on a page is a call to the JSON API with the session's CSRF token."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fleet_server.api.deps import SESSION_COOKIE, ServicesDep, SessionDep
from fleet_server.console.base import HERE, NeedLogin, security_headers, templates
from fleet_server.console.pages import fleet, models, review
from fleet_server.keys import same
from fleet_server.users import service
from fleet_server.users.service import resolve

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/login")
def login_form(request: Request, next: str = "/console/fleet", error: str = "") -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": error})


def _safe_next(url: str) -> str:
    return url if url.startswith("/console/") and "//" not in url and "\\" not in url else "/console/fleet"


@router.post("/login")
def login_submit(
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    name: str = Form(..., max_length=64),
    password: str = Form(..., max_length=1024),
    next: str = Form("/console/fleet"),
) -> Response:
    try:
        token, _, _ = service.audited_login(session, name, password)
    except service.UserError as exc:
        target = f"/console/login?error={quote(str(exc))}&next={quote(_safe_next(next))}"
        return RedirectResponse(target, status_code=303)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=12 * 3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or services.settings.base_url.startswith("https://"),
        path="/",
    )
    return resp


@router.post("/logout")
def logout(request: Request, session: SessionDep, csrf: str = Form("")) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    found = resolve(session, token) if token else None
    if found is not None and csrf and same(csrf, found[1].csrf):
        service.logout(session, token or "")
        session.commit()
    resp = RedirectResponse("/console/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


def install(app: Any) -> None:
    """Mount the console, its static files and the login redirect."""
    app.add_middleware(security_headers)
    app.include_router(router)
    for page in (fleet, models, review):
        app.include_router(page.router)
    app.mount("/console/static", StaticFiles(directory=str(HERE / "static")), name="console-static")

    @app.exception_handler(NeedLogin)
    async def _to_login(request: Request, exc: NeedLogin) -> RedirectResponse:
        return RedirectResponse(f"/console/login?next={quote(exc.next_url)}", status_code=303)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/fleet", status_code=303)
