"""User accounts and their login sessions."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from fleet_server.db import utcnow

ROLES = ("viewer", "operator", "admin")
ROLE_RANK = {r: i for i, r in enumerate(ROLES)}


class User(SQLModel, table=True):
    __tablename__ = "account"  # "user" is reserved in PostgreSQL

    name: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)
    password_hash: str = Field(max_length=255)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = Field(default="admin", max_length=64)


class UserSession(SQLModel, table=True):
    """A login: the bearer/cookie token is stored only as its sha256; csrf guards cookie-borne writes."""

    __tablename__ = "loginsession"

    token_hash: str = Field(primary_key=True, max_length=64)
    user: str = Field(foreign_key="account.name", max_length=64, index=True)
    csrf: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
