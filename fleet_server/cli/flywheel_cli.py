"""`edgeloop samples|flywheel`: review hard samples, hand them to outside tools, drive retraining."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet_server.cli.client import CliError
from fleet_server.cli.common import admin_client, fetch_tar, out
from fleet_server.flywheel.states import SAMPLE_STATES, SampleState


def _line(s: dict[str, Any]) -> str:
    preds = ", ".join(f"{p['label']} {p['score']:.2f}" for p in s["predictions"][:3]) or "-"
    model = f"{s['model'] or '-'}:{s['version'] or '-'}"
    return (
        f"{s['id']:<6} {s['state']:<10} {s['device_id']:<14} {model:<14} "
        f"{s['strategy']:<12} {s['reason'][:36]:<36} {preds}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    keys = ("device", "model", "strategy", "state", "label", "since")
    params = {k: v for k, v in vars(args).items() if k in keys and v}
    params["limit"] = args.limit
    rows = admin_client(args).request("GET", "/api/v1/samples", params=params)["samples"]
    head = f"{'ID':<6} {'STATE':<10} {'DEVICE':<14} {'MODEL':<14} {'STRATEGY':<12} {'REASON':<36} PREDICTIONS"
    out(args, rows, "\n".join([head] + [_line(s) for s in rows]) if rows else "no samples")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    c = admin_client(args)
    if args.action in ("accept", "reject") and len(args.ids) > 1:
        r = c.request("POST", "/api/v1/samples/review", json={"ids": args.ids, "action": args.action})
        lines = [f"{r['action']}ed {r['reviewed']} samples"]
        lines += [f"  sample {f['id']} not {r['action']}ed: {f['reason']}" for f in r.get("failed", [])]
        out(args, r, "\n".join(lines))
        return 0
    body: dict[str, Any] = {"action": args.action}
    if args.action == "correct":
        if not args.labels:
            raise CliError('correct needs --labels \'[{"label": "cat", "box": [x1, y1, x2, y2]}, ...]\'')
        body["labels"] = json.loads(args.labels)
    for sid in args.ids:
        r = c.request("POST", f"/api/v1/samples/{sid}/review", json=body)
        out(args, r, _line(r))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    c = admin_client(args)
    params = {"state": args.state, "format": args.format, **({"classes": args.classes} if args.classes else {})}
    fetch_tar(c, "/api/v1/samples-export", params, args.out)
    print(f"exported {args.state} samples as {args.format} into {args.out} (images named <sample id>.jpg)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    path: Path = args.annotations
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    r = admin_client(args).request("POST", "/api/v1/samples-import", content=path.read_bytes())
    out(args, r, f"labels of {r['updated']} samples replaced (state: corrected)")
    return 0


def cmd_to_dataset(args: argparse.Namespace) -> int:
    body = {"model": args.model} if args.model else {}
    d = admin_client(args).request("POST", f"/api/v1/datasets/{args.dataset}/from-samples", json=body)
    out(args, d, f"created {d['name']}:{d['version']} ({d['samples']} samples, parent {d['parent']})")
    return 0


def cmd_policy_set(args: argparse.Namespace) -> int:
    given = {
        "dataset": args.dataset,
        "min_new_labels": args.min_labels,
        "epochs": args.epochs,
        "budget_points": args.budget,
        "rollout": args.rollout,
        "selector": args.selector,
        "canary": args.canary,
        "waves": args.waves,
        "bake_s": args.bake,
        "drift_drop": args.drift_drop,
        "drift_window_min": args.drift_window,
        "enabled": False if args.disable else True if args.enable else None,
    }
    body = {k: v for k, v in given.items() if v is not None}  # only what was asked changes
    r = admin_client(args).request("PUT", f"/api/v1/flywheel/policies/{args.model}", json=body)
    out(args, r, f"policy for {args.model}: retrain on {r['dataset']} every {r['min_new_labels']} new labels, "
           f"rollout {r['rollout']}{'' if r['enabled'] else ' (disabled)'}")  # fmt: skip
    return 0


def cmd_policy_list(args: argparse.Namespace) -> int:
    rows = admin_client(args).request("GET", "/api/v1/flywheel/policies")
    lines = [
        f"{p['model']:<16} dataset={p['dataset']} min_new_labels={p['min_new_labels']} epochs={p['epochs']} "
        f"budget={p['budget_points']} rollout={p['rollout']} selector={p['selector']} enabled={p['enabled']}"
        + (
            f" drift_drop={p['drift_drop']} drift={p.get('drift') or 'not enough telemetry'}"
            if p.get("drift_drop")
            else ""
        )
        for p in rows
    ]
    out(args, rows, "\n".join(lines) or "no policies")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    r = admin_client(args).request("POST", "/api/v1/flywheel/check")
    out(args, r, f"queued retrain jobs: {r['queued'] or 'none'}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    r = admin_client(args).request("POST", f"/api/v1/flywheel/approve/{args.job}")
    out(args, r, f"approved {r['model']}: rollout {r['rollout']} (edgeloop rollout status {r['rollout']} --watch)")
    return 0


def add_parsers(sub: Any, admin_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("samples", help="hard samples sent by devices").add_subparsers(dest="sub", required=True)
    p = s.add_parser("list", help="the review queue (newest first)")
    for f in ("device", "model", "strategy"):
        p.add_argument(f"--{f}")
    p.add_argument("--label", help="a class predicted or labelled in the sample")
    p.add_argument("--since", help="received at or after, ISO 8601 (e.g. 2026-11-23T10:00:00Z)")
    p.add_argument("--state", choices=SAMPLE_STATES)
    p.add_argument("--limit", type=int, default=50)
    admin_flags(p)
    p.set_defaults(func=cmd_list)
    p = s.add_parser("review", help="accept / reject (one or many) or correct (one) samples")
    p.add_argument("action", choices=["accept", "correct", "reject"])
    p.add_argument("ids", type=int, nargs="+")
    p.add_argument("--labels", help='correct: JSON list of {"label": ..., "box": [x1, y1, x2, y2]}')
    admin_flags(p)
    p.set_defaults(func=cmd_review)
    p = s.add_parser("export", help="a COCO or YOLO folder of samples for CVAT / Label Studio")
    p.add_argument("--format", default="coco", choices=["coco", "yolo"])
    p.add_argument("--state", default=SampleState.NEW.value, choices=SAMPLE_STATES)
    p.add_argument("--classes", help="comma-separated category order")
    p.add_argument("--out", type=Path, required=True)
    admin_flags(p)
    p.set_defaults(func=cmd_export)
    p = s.add_parser("import", help="take labels back from a COCO annotations.json of exported samples")
    p.add_argument("annotations", type=Path)
    admin_flags(p)
    p.set_defaults(func=cmd_import)
    p = s.add_parser("to-dataset", help="add reviewed samples to a new version of a dataset")
    p.add_argument("dataset")
    p.add_argument("--model", help="only samples mined while this model served")
    admin_flags(p)
    p.set_defaults(func=cmd_to_dataset)

    f = sub.add_parser("flywheel", help="retrain policies and approvals").add_subparsers(dest="sub", required=True)
    p = f.add_parser("policy", help="set the retrain policy of a model")
    p.add_argument("model")
    p.add_argument("--dataset", help="the dataset new labels extend (needed for a new policy)")
    p.add_argument("--min-labels", type=int, help="retrain when this many reviewed samples wait (new: 50)")
    p.add_argument("--epochs", type=int, help="new: 4")
    p.add_argument("--budget", type=float, help="holdout regression allowed, in metric points (new: 1.0)")
    p.add_argument("--rollout", choices=["auto", "approve", "none"], help="new: approve")
    p.add_argument("--selector", help="new: all")
    p.add_argument("--canary", help="new: 1")
    p.add_argument("--waves", help="new: 100%%")
    p.add_argument("--bake", type=float, help="seconds per wave (new: 600)")
    p.add_argument(
        "--drift-drop",
        type=float,
        help="also retrain (with at least one new label) when the serving version's mean confidence over the "
        "last --drift-window minutes is this share below its mean before (0.2 = 20 %%)",
    )
    p.add_argument("--drift-window", type=float, help="minutes (new: 60)")
    on = p.add_mutually_exclusive_group()
    on.add_argument("--disable", action="store_true", help="stop this policy (its settings stay)")
    on.add_argument("--enable", action="store_true", help="start it again")
    admin_flags(p)
    p.set_defaults(func=cmd_policy_set)
    p = f.add_parser("policies", help="list retrain policies")
    admin_flags(p)
    p.set_defaults(func=cmd_policy_list)
    p = f.add_parser("check", help="evaluate the policies now (the server does it every few seconds)")
    admin_flags(p)
    p.set_defaults(func=cmd_check)
    p = f.add_parser("approve", help="start the rollout of a retrained version awaiting approval")
    p.add_argument("job", type=int)
    admin_flags(p)
    p.set_defaults(func=cmd_approve)
