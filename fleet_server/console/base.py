"""What every console page shares: the templates, who is looking (`ConsoleUser`), rendering, security headers."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from fleet_server.api.deps import Principal, SessionDep, principal
from fleet_server.keys import WARN_DAYS
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


class NeedLogin(Exception):
    """Raised by a page when nobody is logged in; the app turns it into a redirect to the login form."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def console_user(request: Request, session: SessionDep) -> Principal:
    """The person (or admin token) looking at the page; the login form for anyone else."""
    try:
        who = principal(request, session)
    except HTTPException as exc:
        raise NeedLogin(str(request.url.path)) from exc
    if who.kind == "device":
        raise HTTPException(403, "device credentials cannot open the console")
    return who


def console_admin(who: Annotated[Principal, Depends(console_user)]) -> Principal:
    if who.role != "admin":
        raise HTTPException(403, "managing users needs the admin role")
    return who


ConsoleUser = Annotated[Principal, Depends(console_user)]
ConsoleAdmin = Annotated[Principal, Depends(console_admin)]


def get_or_404(session: Session, table: Any, key: Any, what: str) -> Any:
    """The row, or a 404 that names what is missing."""
    row = session.get(table, key)
    if row is None:
        raise HTTPException(404, f"no {what}")
    return row


def key_warning(request: Request) -> str | None:
    """A sentence when the release key's certificate ends within WARN_DAYS: after that day no new version
    can be signed that devices accept, so every page says so until it is rotated."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return None
    left = (services.keys.cert.body().expires_at - datetime.now(timezone.utc)).total_seconds() / 86400
    if left > WARN_DAYS:
        return None
    when = f"expires in {left:.0f} days" if left > 0 else "has expired"
    return f"The release key's certificate {when}: run `edgeloop keys rotate-release` and restart the server."


def render(request: Request, who: Principal, name: str, **ctx: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "who": who,
            "can_operate": ROLE_RANK.get(who.role, -1) >= ROLE_RANK["operator"],
            "is_admin": who.role == "admin",
            "key_warning": key_warning(request),
            **ctx,
        },
    )


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
