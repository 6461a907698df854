"""Shared dependencies: the services, a DB session, and who is calling (admin token, user, device)."""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi import Path as FastPath
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlmodel import Session, select
from starlette.background import BackgroundTask

from fleet_server.devices.tables import Device
from fleet_server.keys import same, token_hash
from fleet_server.services import Services
from fleet_server.storage import TooLarge
from fleet_server.users.service import resolve
from fleet_server.users.tables import ROLE_RANK

MAX_ID = 2**31 - 1  # PostgreSQL's integer: an id or a version past it names nothing (and SQLite would 500 on it)
Id = Annotated[int, FastPath(ge=1, le=MAX_ID, description="a row id")]
Version = Annotated[int, FastPath(ge=1, le=MAX_ID, description="a version number")]
Limit = Annotated[int, Query(ge=1, le=5000, description="at most this many rows")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="skip this many rows")]


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="Why, in one sentence; for a malformed request, FastAPI's list of field errors."
    )


# documented on every route: what the API answers when it says no
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (401, "No credential, or a wrong or expired one."),
        (403, "The credential's role (or a device's identity) may not do this, or the CSRF token is missing."),
        (404, "No such thing."),
        (409, "It conflicts with the current state (already enrolled, already finished, not running)."),
        (413, "The upload is larger than the server takes."),
        (422, "The request cannot be done as asked: malformed, out of range, or refused by a check."),
        (429, "Too many failed logins for this name; retry later."),
        (503, "A part the server needs (object storage, the broker) is down; retry later."),
    )
}


def binary(media_type: str, what: str) -> dict[int | str, dict[str, Any]]:
    """The 200 response of a download, documented as the bytes it is (not JSON)."""
    return {200: {"content": {media_type: {"schema": {"type": "string", "format": "binary"}}}, "description": what}}


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with Session(services.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


SESSION_COOKIE = "edgeloop_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Principal:
    kind: str  # "admin" (the admin token) | "user" (a login) | "device"
    name: str
    role: str = "admin"  # viewer | operator | admin; a device has none
    csrf: str | None = None  # set for a console (cookie) login

    @property
    def actor(self) -> str:
        return self.name if self.kind != "user" else f"user:{self.name}"


def principal(request: Request, session: Session) -> Principal:
    """Who sent this request; 401 without a valid credential. The console and the API share it."""
    token = bearer(request)
    from_cookie = False
    if token is None:
        token = request.cookies.get(SESSION_COOKIE)
        from_cookie = token is not None
    if token is None:
        raise _unauthorized("missing bearer token")
    if not from_cookie and same(token, get_services(request).admin_token):
        who = Principal("admin", "admin", "admin")
    elif token.startswith("edl_user_"):
        found = resolve(session, token)
        if found is None:
            raise _unauthorized("session expired or signed out; log in again")
        user, row = found
        if from_cookie and request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent or not same(sent, row.csrf):
                raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        who = Principal("user", user.name, user.role, row.csrf if from_cookie else None)
    elif from_cookie:
        raise _unauthorized("invalid session")
    else:
        device_id = session.exec(select(Device.id).where(Device.token_hash == token_hash(token))).first()
        if device_id is None:
            raise _unauthorized("invalid token")
        who = Principal("device", device_id, "")
    request.state.principal = who  # read by the audit middleware
    return who


def _at_least(request: Request, session: Session, role: str) -> Principal:
    who = principal(request, session)
    if who.kind == "device":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "device credentials cannot call this endpoint")
    if ROLE_RANK.get(who.role, -1) < ROLE_RANK[role]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role; {who.name} is a {who.role}")
    return who


def require_viewer(request: Request, session: SessionDep) -> Principal:
    return _at_least(request, session, "viewer")


def require_operator(request: Request, session: SessionDep) -> Principal:
    return _at_least(request, session, "operator")


def require_admin(request: Request, session: SessionDep) -> Principal:
    return _at_least(request, session, "admin")


def require_admin_or_device(request: Request, session: SessionDep) -> Principal:
    return principal(request, session)


ViewerDep = Annotated[Principal, Depends(require_viewer)]
OperatorDep = Annotated[Principal, Depends(require_operator)]
AdminDep = Annotated[Principal, Depends(require_admin)]
AnyPrincipalDep = Annotated[Principal, Depends(require_admin_or_device)]


def folder_as_targz(folder: Path, work: Path) -> FileResponse:
    """A FileResponse with `folder` as a .tar.gz; `work` (the folder's parent temp dir) is removed after sending."""
    archive = work / f"{folder.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=archive.name,
        background=BackgroundTask(shutil.rmtree, work, True),
    )


def check_declared_length(request: Request, limit: int, what: str = "upload") -> None:
    """413 before reading a byte when the client declares a body over the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"{what} is {declared} bytes; the limit is {limit}")


async def read_capped(request: Request, limit: int) -> bytes:
    """The whole body in memory, refused with 413 once it passes `limit` (declared or streamed)."""
    check_declared_length(request, limit)
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise HTTPException(413, f"upload exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_upload(request: Request, what: str = "upload") -> tuple[Path, str, int]:
    """Stream the body to a temp file in the artifact store, capped at max_upload_bytes: (path, sha256, length)."""
    services = get_services(request)
    limit = services.settings.max_upload_bytes
    check_declared_length(request, limit, what)
    try:
        return await services.store.receive(request.stream(), limit)
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
