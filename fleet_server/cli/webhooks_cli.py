"""`edgeloop webhooks`: signed JSON to your URLs when a rollout aborts, a device drops off, drift fires, a job
fails or a model version is registered."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fleet_server.cli.common import admin_client, out

EVENTS = "rollout.aborted,device.offline,drift,job.failed,model.registered"


def _line(h: dict[str, Any]) -> str:
    d = h["deliveries"]
    return (
        f"{h['id']:<4} {'on ' if h['enabled'] else 'off'} {h['url']:<48} {','.join(h['events']):<40} "
        f"delivered {d['delivered']}, pending {d['pending']}, failed {d['failed']}"
    )


def cmd_add(args: argparse.Namespace) -> int:
    body = {"url": args.url, "events": [e.strip() for e in args.events.split(",") if e.strip()], "secret": args.secret}
    h = admin_client(args).request("POST", "/api/v1/webhooks", json=body)
    extra = "" if args.secret else f"\nsecret (shown once; verify X-Edgeloop-Signature-256 with it): {h['secret']}"
    out(args, h, _line(h) + extra)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = admin_client(args).request("GET", "/api/v1/webhooks")
    out(args, rows, "\n".join(_line(h) for h in rows) if rows else "no webhooks")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    r = admin_client(args).request("DELETE", f"/api/v1/webhooks/{args.id}")
    out(args, r, f"removed webhook {args.id}: nothing more is sent to it")
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    rows = admin_client(args).request("GET", f"/api/v1/webhooks/{args.id}/deliveries", params={"limit": args.limit})
    lines = [f"{'ID':<6} {'EVENT':<17} {'STATE':<10} {'TRIES':>5}  {'LAST':<24} CREATED"]
    for d in rows:
        last = d["last_error"] or (f"HTTP {d['last_status']}" if d["last_status"] else "-")
        lines.append(
            f"{d['id']:<6} {d['event']:<17} {d['state']:<10} {d['attempts']:>5}  {last[:24]:<24} {d['created_at']}"
        )
    out(args, rows, "\n".join(lines))
    return 0


def add_parsers(sub: Any, admin_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    w = sub.add_parser("webhooks", help="signed event notifications to your URLs").add_subparsers(
        dest="sub", required=True
    )
    a = w.add_parser("add", help="send these events to URL (JSON, HMAC-SHA256 signed, retried until delivered)")
    a.add_argument("url")
    a.add_argument("--events", required=True, help=f"comma-separated: {EVENTS}")
    a.add_argument("--secret", help="HMAC key, 16+ characters (default: one is made and shown once)")
    admin_flags(a)
    a.set_defaults(func=cmd_add)
    ls = w.add_parser("list", help="webhooks and their delivery counts")
    admin_flags(ls)
    ls.set_defaults(func=cmd_list)
    rm = w.add_parser("remove", help="stop sending to a webhook (its delivery history stays)")
    rm.add_argument("id", type=int)
    admin_flags(rm)
    rm.set_defaults(func=cmd_remove)
    dl = w.add_parser("deliveries", help="a webhook's recent deliveries: state, tries, last answer")
    dl.add_argument("id", type=int)
    dl.add_argument("--limit", type=int, default=20)
    admin_flags(dl)
    dl.set_defaults(func=cmd_deliveries)
