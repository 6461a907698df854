"""Accounts, roles and login sessions over real HTTP. If these fail, a weak password is accepted, a guessed
password is not slowed down, a disabled user keeps access, or a cookie can be ridden by another site."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, mosquitto: str) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("users") / "data", mosquitto)
    yield s
    s.stop()


def _login(s: Server, name: str, password: str) -> httpx.Response:
    return httpx.post(f"{s.url}/api/v1/auth/login", json={"name": name, "password": password})


@pytest.mark.parametrize(
    ("name", "role", "password", "why"),
    [
        ("", "viewer", "Good-pass-123", "user name"),
        ("Bad Name", "viewer", "Good-pass-123", "user name"),
        ("sam", "root", "Good-pass-123", "role must be one of"),
        ("admin", "viewer", "Good-pass-123", "reserved"),  # would pass for the admin token in the audit log
        ("sam", "viewer", "short1A", "at least 10"),
        ("sam", "viewer", "alllowercaseletters", "too easy"),
    ],
)
def test_bad_user_requests_are_refused_with_the_reason(
    srv: Server, name: str, role: str, password: str, why: str
) -> None:
    r = srv.http.post("/api/v1/users", json={"name": name, "role": role, "password": password})
    assert r.status_code == 422 and why in r.json()["detail"]


def test_roles_gate_the_api_and_a_device_token_is_not_a_person(srv: Server) -> None:
    for name, role in (("vera", "viewer"), ("otto", "operator")):
        assert (
            srv.http.post("/api/v1/users", json={"name": name, "role": role, "password": "Pass-word-99"}).status_code
            == 201
        )
    assert (
        srv.http.post("/api/v1/users", json={"name": "vera", "role": "viewer", "password": "Pass-word-99"}).status_code
        == 422
    )
    vera = {"Authorization": "Bearer " + _login(srv, "vera", "Pass-word-99").json()["token"]}
    otto = {"Authorization": "Bearer " + _login(srv, "otto", "Pass-word-99").json()["token"]}
    assert httpx.get(f"{srv.url}/api/v1/devices", headers=vera).status_code == 200
    assert httpx.get(f"{srv.url}/api/v1/auth/me", headers=vera).json() == {
        "kind": "user",
        "name": "vera",
        "role": "viewer",
    }
    # viewers read; operators act on rollouts and labels; only admins manage devices and users
    assert httpx.post(f"{srv.url}/api/v1/flywheel/check", headers=vera).status_code == 403
    assert httpx.post(f"{srv.url}/api/v1/devices", json={"device_id": "x1"}, headers=otto).status_code == 403
    assert httpx.get(f"{srv.url}/api/v1/users", headers=otto).status_code == 403
    dev = srv.enroll("cam-users")
    devh = {"Authorization": f"Bearer {dev['token']}"}
    assert httpx.get(f"{srv.url}/api/v1/devices", headers=devh).status_code == 403
    assert httpx.get(f"{srv.url}/console/fleet", headers=devh).status_code == 403
    # every write by a person is in the audit log, failed logins included (never the password)
    _login(srv, "otto", "wrong-password-1")
    log = srv.http.get("/api/v1/audit", params={"actor": "otto"}).json()
    assert [a["action"] for a in log][:1] == ["login-failed"]
    assert "wrong-password-1" not in srv.http.get("/api/v1/audit").text
    assert "Pass-word-99" not in srv.proc.log()


def test_failed_logins_are_throttled_and_disabling_ends_sessions(srv: Server) -> None:
    assert (
        srv.http.post(
            "/api/v1/users", json={"name": "tess", "role": "operator", "password": "Tess-pass-12"}
        ).status_code
        == 201
    )
    good = _login(srv, "tess", "Tess-pass-12")
    assert good.status_code == 200
    tok = {"Authorization": "Bearer " + good.json()["token"]}
    codes = [_login(srv, "tess", f"guess-number-{i}").status_code for i in range(6)]
    assert codes == [401] * 5 + [429]
    assert _login(srv, "tess", "Tess-pass-12").status_code == 429  # even the right password waits out the window
    assert httpx.get(f"{srv.url}/api/v1/auth/me", headers=tok).status_code == 200  # existing sessions go on
    assert srv.http.patch("/api/v1/users/tess", json={"disabled": True}).status_code == 200
    assert httpx.get(f"{srv.url}/api/v1/auth/me", headers=tok).status_code == 401
    # unknown names take as long as known ones to refuse, and say the same thing
    r = _login(srv, "nobody-here", "Whatever-123")
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"


def test_a_session_cookie_needs_the_csrf_token_to_write_and_logout_ends_it(srv: Server, tmp_path: Path) -> None:
    assert (
        srv.http.post(
            "/api/v1/users", json={"name": "cora", "role": "operator", "password": "Cora-pass-12"}
        ).status_code
        == 201
    )
    c = httpx.Client(base_url=srv.url, follow_redirects=False)
    r = c.post("/console/login", data={"name": "cora", "password": "Cora-pass-12", "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/console/fleet"  # no open redirect
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = c.get("/console/fleet")
    assert page.status_code == 200
    assert (
        "frame-ancestors 'none'" in page.headers["content-security-policy"]
        and page.headers["x-frame-options"] == "DENY"
    )
    assert c.post("/api/v1/flywheel/check").status_code == 403  # cookie alone cannot write
    page = c.get("/console/fleet").text
    csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
    assert c.post("/api/v1/flywheel/check", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert c.post("/console/logout", data={"csrf": csrf}).status_code == 303
    c.cookies.clear()
    r = c.get("/console/fleet")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


def test_admins_rotate_and_revoke_device_credentials_and_operators_cannot(srv: Server) -> None:
    dev = srv.enroll("cam-keys")
    old = {"Authorization": f"Bearer {dev['token']}"}

    def upload(headers: dict) -> int:
        return httpx.post(
            f"{srv.url}/api/v1/devices/cam-keys/samples", headers=headers, files={"image": ("x.jpg", b"x")}
        ).status_code

    assert upload(old) == 422  # authenticated (the body is what is wrong)
    assert (
        srv.http.post(
            "/api/v1/users", json={"name": "oskar", "role": "operator", "password": "Oskar-pass-1"}
        ).status_code
        == 201
    )
    oskar = {"Authorization": "Bearer " + _login(srv, "oskar", "Oskar-pass-1").json()["token"]}
    assert httpx.post(f"{srv.url}/api/v1/devices/cam-keys/revoke", headers=oskar).status_code == 403
    new = srv.http.post("/api/v1/devices/cam-keys/rotate-token").json()
    assert new["token"] != dev["token"] and new["device_id"] == "cam-keys"
    assert upload(old) == 401 and upload({"Authorization": f"Bearer {new['token']}"}) == 422
    assert srv.http.post("/api/v1/devices/cam-keys/revoke").json()["revoked"] is True
    assert upload({"Authorization": f"Bearer {new['token']}"}) == 401
    actions = [a["action"] for a in srv.http.get("/api/v1/audit", params={"target": "device/cam-keys"}).json()]
    assert actions[:2] == ["revoked", "token-rotated"]
