"""Log in and out, manage users (admin), read the audit log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from fleet_server.api.deps import SESSION_COOKIE, AdminDep, SessionDep, ViewerDep, bearer
from fleet_server.audit import audit
from fleet_server.users import service
from fleet_server.users.tables import User, UserSession

router = APIRouter(prefix="/api/v1", tags=["users"])


class LoginIn(BaseModel):
    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class UserIn(BaseModel):
    name: str = Field(max_length=64)
    role: str = Field(description="viewer | operator | admin")
    password: str = Field(max_length=1024)


class UserPatch(BaseModel):
    role: str | None = None
    password: str | None = Field(None, max_length=1024)
    disabled: bool | None = None


def _public(u: User) -> dict[str, Any]:
    return {
        "name": u.name,
        "role": u.role,
        "disabled": u.disabled,
        "created_at": u.created_at,
        "created_by": u.created_by,
    }


def do_login(session: SessionDep, name: str, password: str) -> tuple[str, UserSession, User]:
    """Shared by the API and the console form: both outcomes are audit-logged (never the password)."""
    try:
        return service.audited_login(session, name, password)
    except service.Throttled as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc)) from exc
    except service.UserError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from exc


@router.post("/auth/login")
def login(body: LoginIn, session: SessionDep) -> dict[str, Any]:
    token, row, user = do_login(session, body.name, body.password)
    return {"token": token, "csrf": row.csrf, "name": user.name, "role": user.role, "expires_at": row.expires_at}


@router.post("/auth/logout")
def logout(request: Request, session: SessionDep, who: ViewerDep) -> dict[str, Any]:
    if who.kind != "user":
        raise HTTPException(400, "only a user login can be logged out")

    token = bearer(request) or request.cookies.get(SESSION_COOKIE) or ""
    service.logout(session, token)
    session.commit()
    return {"ok": True}


@router.get("/auth/me")
def me(who: ViewerDep) -> dict[str, Any]:
    return {"kind": who.kind, "name": who.name, "role": who.role}


@router.get("/users")
def list_users(session: SessionDep, _: AdminDep) -> list[dict[str, Any]]:
    return [_public(u) for u in service.list_users(session)]


@router.post("/users", status_code=status.HTTP_201_CREATED)
def create_user(body: UserIn, session: SessionDep, who: AdminDep) -> dict[str, Any]:
    try:
        user = service.create_user(session, body.name, body.role, body.password, who.actor)
    except service.UserError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc
    audit(session, who.actor, "user-create", f"user:{user.name}", f"role={user.role}")
    session.commit()
    return _public(user)


@router.patch("/users/{name}")
def update_user(name: str, body: UserPatch, session: SessionDep, who: AdminDep) -> dict[str, Any]:
    try:
        user = service.update_user(session, name, body.role, body.password, body.disabled)
    except service.UserError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc
    changed = ",".join(k for k, v in body.model_dump().items() if v is not None and k != "password")
    audit(session, who.actor, "user-update", f"user:{name}", changed + (",password" if body.password else ""))
    session.commit()
    return _public(user)
