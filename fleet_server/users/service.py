"""Create users, log in and out, resolve a session token; failed logins are throttled per user name."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import datetime, timedelta, timezone

from sqlmodel import Session, col, delete, select

from fleet_server.audit import audit
from fleet_server.keys import token_hash
from fleet_server.users.passwords import check_strength, hash_password, verify_password
from fleet_server.users.tables import ROLES, User, UserSession

SESSION_HOURS = 12
MAX_FAILURES, FAILURE_WINDOW_S = 5, 300.0
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-@")
# names the audit log already uses for the admin token and the server's own actors
RESERVED = {"admin", "flywheel", "system", "root"}


class UserError(ValueError):
    """A request about users that cannot be done as asked (the message says why)."""


class Throttled(UserError):
    pass


class _Failures:
    """Recent failed logins per user name (per replica): the sixth try within 5 minutes is refused.

    An attempt is counted as a failure *before* its password is checked (`attempt`), and forgiven only when it
    succeeds: parallel attempts cannot all slip past the count while the slow scrypt runs. A success forgives
    the failures that are over, not the attempts still being checked beside it: those stay counted, so that a
    right guess among many parallel ones does not open the door to five more.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, list[tuple[float, int]]] = {}  # name -> (time, ticket) of each counted attempt
        self._open: dict[str, set[int]] = {}  # name -> tickets whose password check is running
        self._next = 0

    def attempt(self, name: str) -> tuple[float, int]:
        """Count one attempt now: (seconds until the next try is allowed, >0 if refused; its ticket)."""
        now = time.monotonic()
        with self._lock:
            recent = [e for e in self._seen.get(name, []) if now - e[0] < FAILURE_WINDOW_S]
            self._seen[name] = recent
            if len(recent) >= MAX_FAILURES:
                return FAILURE_WINDOW_S - (now - recent[0][0]), -1
            self._next += 1
            recent.append((now, self._next))
            self._open.setdefault(name, set()).add(self._next)
            return 0.0, self._next

    def failed(self, name: str, ticket: int) -> None:
        with self._lock:
            self._open.get(name, set()).discard(ticket)

    def succeeded(self, name: str, ticket: int) -> None:
        with self._lock:
            still = self._open.get(name, set()) - {ticket}
            self._seen[name] = [e for e in self._seen.get(name, []) if e[1] in still]
            self._open[name] = still
            if not still:
                self._seen.pop(name, None)
                self._open.pop(name, None)


FAILURES = _Failures()


def create_user(session: Session, name: str, role: str, password: str, by: str) -> User:
    name = name.strip().lower()
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise UserError("a user name is 1-64 characters of a-z, 0-9, '.', '_', '-', '@'")
    if name in RESERVED or name.startswith("rollout-engine"):
        raise UserError(f"{name!r} is reserved (the audit log uses it for the server itself); pick another name")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    why = check_strength(password)
    if why:
        raise UserError(why)
    if session.get(User, name) is not None:
        raise UserError(f"user {name} exists")
    user = User(name=name, role=role, password_hash=hash_password(password), created_by=by)
    session.add(user)
    return user


def update_user(
    session: Session, name: str, role: str | None = None, password: str | None = None, disabled: bool | None = None
) -> User:
    user = session.get(User, name)
    if user is None:
        raise UserError(f"no user {name}")
    if role is not None:
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}")
        user.role = role
    if password is not None:
        why = check_strength(password)
        if why:
            raise UserError(why)
        user.password_hash = hash_password(password)
    if disabled is not None:
        user.disabled = disabled
    if disabled or password is not None or role is not None:  # a change of rights ends the user's sessions
        session.exec(delete(UserSession).where(col(UserSession.user) == name))
    session.add(user)
    return user


def login(session: Session, name: str, password: str) -> tuple[str, UserSession, User]:
    """(token, session row, user) or UserError; the token is shown once and stored only hashed."""
    name = name.strip().lower()
    wait, ticket = FAILURES.attempt(name)  # counted as a failure until it succeeds
    if wait > 0:
        raise Throttled(f"too many failed logins for {name}; try again in {int(wait) + 1} s")
    try:
        user = session.get(User, name)
        # verify even for an unknown name so that timing does not tell which names exist
        hashed = user.password_hash if user else "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AA=="
        ok = verify_password(password, hashed) and user is not None and not user.disabled
    except BaseException:
        FAILURES.failed(name, ticket)
        raise
    if not ok or user is None:
        FAILURES.failed(name, ticket)
        raise UserError("wrong user name or password")
    FAILURES.succeeded(name, ticket)
    token = "edl_user_" + secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    row = UserSession(
        token_hash=token_hash(token),
        user=user.name,
        csrf=secrets.token_urlsafe(24),
        created_at=now,
        expires_at=now + timedelta(hours=SESSION_HOURS),
    )
    session.add(row)
    session.exec(delete(UserSession).where(col(UserSession.expires_at) < now))
    return token, row, user


def audited_login(session: Session, name: str, password: str) -> tuple[str, UserSession, User]:
    """`login`, with both outcomes in the audit log (never the password); commits."""
    try:
        token, row, user = login(session, name, password)
    except Throttled:
        audit(session, name[:64], "login-throttled", "auth")
        session.commit()
        raise
    except UserError:
        audit(session, name[:64], "login-failed", "auth")
        session.commit()
        raise
    audit(session, f"user:{user.name}", "login", "auth")
    session.commit()
    return token, row, user


def resolve(session: Session, token: str) -> tuple[User, UserSession] | None:
    row = session.get(UserSession, token_hash(token))
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)
    if expires < datetime.now(timezone.utc):
        return None
    user = session.get(User, row.user)
    if user is None or user.disabled:
        return None
    return user, row


def logout(session: Session, token: str) -> None:
    session.exec(delete(UserSession).where(col(UserSession.token_hash) == token_hash(token)))


def list_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(col(User.name))).all())
