"""`edgeloop rollout …` and `edgeloop devices tag`."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from fleet_server.cli.client import AdminClient, CliError, parse_ref
from fleet_server.rollouts.states import LIVE, DeviceRolloutState, RolloutState

# devices whose part of a wave is over, one way or another
SETTLED = tuple(
    s.value for s in DeviceRolloutState if s not in (DeviceRolloutState.PENDING, DeviceRolloutState.DEPLOYING)
)
WATCHED = LIVE | {RolloutState.ABORTING}  # `rollout status --watch` follows these


def duration(text: str) -> float:
    m = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 30s, 10m, 1h")
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m[2]]


def share(text: str) -> float:
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share like 5% or 0.05") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0% and 100%")
    return v


# one character per share of a wave: updated, failed or sent back, not reached, still to come
MARKS = (("#", ("active",)), ("x", ("failed", "gate_failed", "rolled_back")), ("-", ("not_updated",)))


def bar(states: dict[str, int], total: int, width: int = 20) -> str:
    """`[####xx--......]`: only devices that updated fill the bar with #; a wave rolled back or not reached
    never reads as a full bar of success."""
    out = ""
    for mark, keys in MARKS:
        n = sum(states.get(k, 0) for k in keys)
        out += mark * (round(width * n / total) if total else 0)
    out = out[:width]
    return "[" + out + "." * (width - len(out)) + "]"


def render(r: dict[str, Any]) -> str:
    lines = [
        f"rollout {r['id']}  {r['model']}:{r['version']}  {r['state'].upper()}  selector {r['selector']}  "
        f"gates {', '.join(r['gates']) or '-'}  bake {r['bake_s']:g}s  max failure {r['max_failure']:.0%}"
    ]
    for w in r["waves"]:
        st = w["states"]
        done = sum(st.get(k, 0) for k in SETTLED)
        marker = ">" if w["wave"] == r["wave"] and r["state"] in LIVE else " "
        detail = " ".join(f"{k}={v}" for k, v in sorted(st.items()))
        lines.append(f" {marker} {w['name']:<8} {bar(st, w['devices'])} {done}/{w['devices']}  {detail}")
    if r.get("reason"):
        lines.append(f"   reason: {r['reason']}")
    lines.append("   # updated   x failed or sent back   - not reached   . to come")
    return "\n".join(lines)


def cmd_tag(args: argparse.Namespace) -> int:
    tags = dict(p.split("=", 1) for p in args.tags if "=" in p)
    bad = [p for p in args.tags if "=" not in p]
    if bad:
        raise CliError(f"tags must be key=value, got {bad}")
    r = AdminClient(args.server_url, args.token).request(
        "PUT", f"/api/v1/devices/{args.device_id}/tags", json={"tags": tags, "remove": args.remove or []}
    )
    print(
        json.dumps(r, indent=2)
        if args.json
        else f"{r['device_id']}: " + " ".join(f"{k}={v}" for k, v in sorted(r["tags"].items()))
    )
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    name, version = parse_ref(args.ref)
    body = {
        "model": name,
        "version": version,
        "selector": args.selector,
        "slot": args.slot,
        "canary": args.canary,
        "waves": [w for w in args.waves.split(",") if w],
        "bake_s": args.bake,
        "max_failure": args.max_failure,
        "gates": args.gate or ["fps>=0.9x", "p95<=1.2x"],
        "offline_timeout_s": args.offline_timeout,
        "skip_incompatible": args.skip_incompatible,
        "shadow": args.shadow,
        "shadow_share": args.shadow_share,
    }
    r = AdminClient(args.server_url, args.token).request("POST", "/api/v1/rollouts", json=body)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
    else:
        for old in r.get("superseded", []):
            print(f"rollout {old} superseded by this one (its devices are now in rollout {r['id']})")
        print(render(r))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = AdminClient(args.server_url, args.token)
    while True:
        r = client.request("GET", f"/api/v1/rollouts/{args.id}")
        if args.json:
            print(json.dumps(r, indent=2, default=str))
            return 0
        out = render(r)
        if args.audit:
            out += "\n" + "\n".join(
                f"   {a['at']}  {a['actor']:<24} {a['action']:<13} {a['detail'] or ''}" for a in r["audit"]
            )
        if not args.watch:
            print(out)
            return 0
        sys.stdout.write("\033[H\033[J" + out + "\n")
        sys.stdout.flush()
        if r["state"] not in WATCHED:
            return 0
        time.sleep(1)


def cmd_list(args: argparse.Namespace) -> int:
    rows = AdminClient(args.server_url, args.token).request("GET", "/api/v1/rollouts")
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        print(f"{r['id']:>4}  {r['model']}:{r['version']:<5} {r['state']:<11} wave {r['wave']}  {r['selector']}")
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    r = AdminClient(args.server_url, args.token).request("POST", f"/api/v1/rollouts/{args.id}/{args.action}")
    print(json.dumps(r, indent=2, default=str) if args.json else render(r))
    return 0


def add_parsers(sub: Any, devices_sub: Any, admin_flags: Any) -> None:
    t = devices_sub.add_parser("tag", help="set tags on a device (site=berlin camera=dock)")
    t.add_argument("device_id")
    t.add_argument("tags", nargs="*", help="key=value pairs")
    t.add_argument("--remove", action="append", help="tag key to remove")
    admin_flags(t)
    t.set_defaults(func=cmd_tag)

    ro = sub.add_parser("rollout", help="staged rollouts gated on model behaviour").add_subparsers(
        dest="sub", required=True
    )
    c = ro.add_parser("create", help="roll a version out: canary, then waves, with gates and automatic rollback")
    c.add_argument("ref", help="NAME:VERSION")
    c.add_argument("--selector", required=True, help="all | site=berlin,camera=dock | device=cam-1|cam-2")
    c.add_argument("--slot", default="default", help="the model slot it updates on each device (default)")
    c.add_argument("--canary", default="1", help="canary size: a count (5) or a share (2%%); default 1")
    c.add_argument("--waves", default="100%", help="cumulative shares after the canary, e.g. 10%%,50%%,100%%")
    c.add_argument("--bake", type=duration, default=600.0, help="time each wave runs before it is judged (10m)")
    c.add_argument("--max-failure", type=share, default=0.05, help="failed share of a wave that aborts (5%%)")
    c.add_argument(
        "--gate",
        action="append",
        help="fps>=0.9x, p95<=1.2x, error_rate<=0.01, confidence>=0.9x, agreement>=0.9 (repeatable; "
        "default fps>=0.9x and p95<=1.2x)",
    )
    c.add_argument(
        "--offline-timeout",
        type=duration,
        default=600.0,
        help="wait this long for offline devices, then count them as not updated (10m)",
    )
    c.add_argument(
        "--shadow",
        action="store_true",
        help="the canary first runs the new version in shadow beside the old one (gate it with agreement>=N)",
    )
    c.add_argument("--shadow-share", type=share, default=0.2, help="share of frames the shadow runs on (20%%)")
    c.add_argument("--skip-incompatible", action="store_true", help="leave out devices without a fitting artifact")
    admin_flags(c)
    c.set_defaults(func=cmd_create)
    s = ro.add_parser("status", help="progress per wave")
    s.add_argument("id", type=int)
    s.add_argument("--watch", action="store_true", help="refresh every second until the rollout ends")
    s.add_argument("--audit", action="store_true", help="also print the audit log")
    admin_flags(s)
    s.set_defaults(func=cmd_status)
    ls = ro.add_parser("list", help="recent rollouts")
    admin_flags(ls)
    ls.set_defaults(func=cmd_list)
    for action, text in (
        ("pause", "stop advancing"),
        ("resume", "continue a paused rollout"),
        ("promote", "skip the rest of the current bake"),
        ("abort", "stop and send every device that moved back"),
        ("rollback", "send every device that moved back"),
    ):
        a = ro.add_parser(action, help=text)
        a.add_argument("id", type=int)
        admin_flags(a)
        a.set_defaults(func=cmd_action, action=action)
