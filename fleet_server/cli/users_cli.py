"""`edgeloop users`: console and API accounts with roles viewer / operator / admin."""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from collections.abc import Callable
from typing import Any

from fleet_server.cli.common import admin_client, out


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated): from stdin with --password-stdin, a prompt on a terminal, else generated."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    if sys.stdin.isatty() and not os.environ.get("CI"):
        return getpass.getpass("password: "), False
    return "El-" + secrets.token_urlsafe(15), True


def _line(u: dict[str, Any]) -> str:
    return f"{u['name']:<24} {u['role']:<9} {'disabled' if u['disabled'] else 'active':<9} by {u['created_by']}"


def cmd_add(args: argparse.Namespace) -> int:
    password, generated = _password(args)
    u = admin_client(args).request(
        "POST", "/api/v1/users", json={"name": args.name, "role": args.role, "password": password}
    )
    if generated:
        u["password"] = password  # shown once, to the admin who made it
    out(args, u, _line(u) + (f"\npassword (shown once): {password}" if generated else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = admin_client(args).request("GET", "/api/v1/users")
    out(args, rows, "\n".join(_line(u) for u in rows) if rows else "no users")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.role:
        body["role"] = args.role
    if args.disable or args.enable:
        body["disabled"] = bool(args.disable)
    if args.new_password:
        body["password"] = _password(args)[0]
    u = admin_client(args).request("PATCH", f"/api/v1/users/{args.name}", json=body)
    out(args, u, _line(u))
    return 0


def add_parsers(sub: Any, admin_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("users", help="console / API accounts and their roles").add_subparsers(dest="sub", required=True)
    p = s.add_parser("add", help="create a user; without a terminal the password is generated and printed once")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    admin_flags(p)
    p.set_defaults(func=cmd_add)
    p = s.add_parser("list", help="users with role and state")
    admin_flags(p)
    p.set_defaults(func=cmd_list)
    p = s.add_parser("set", help="change a user's role, password or state (ends their sessions)")
    p.add_argument("name")
    p.add_argument("--role", choices=["viewer", "operator", "admin"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--disable", action="store_true")
    g.add_argument("--enable", action="store_true")
    p.add_argument("--new-password", action="store_true", help="set a new password (prompt or --password-stdin)")
    p.add_argument("--password-stdin", action="store_true")
    admin_flags(p)
    p.set_defaults(func=cmd_set)
