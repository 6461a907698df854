"""`edgeloop` command line: run the server; push models, enroll devices, deploy."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fleet_server.cli import flywheel_cli, keys_cli, users_cli, webhooks_cli, zoo_cli
from fleet_server.cli.client import AdminClient, CliError, parse_ref
from fleet_server.cli.common import out
from fleet_server.cli.rollouts_cli import add_parsers
from model_zoo.compile import CompileReport, table_text


# -- server ---------------------------------------------------------------------------------------
def cmd_server(args: argparse.Namespace) -> int:
    # the server's whole application takes a second and a half to import: the other commands, HTTP clients
    # of it, do without
    from fleet_server.cli.server_cli import cmd_server as run

    return run(args)


# -- models ---------------------------------------------------------------------------------------
def cmd_models_push(args: argparse.Namespace) -> int:
    path: Path = args.model
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    params = {
        "task": args.task,
        "classes": args.classes,
        "resize": args.resize,
        "color": args.color,
        "mean": args.mean,
        "std": args.std,
    }
    if args.decoder:
        params["decoder"] = args.decoder
    if args.input_size:
        params["input_size"] = args.input_size
    client = AdminClient(args.server_url, args.token)
    with open(path, "rb") as fh:
        data = client.request(
            "POST",
            f"/api/v1/models/{args.name}/versions",
            params=params,
            content=fh,
            headers={"Content-Type": "application/octet-stream"},
        )
    out(args, data, f"{data['name']}:{data['version']}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    rows = AdminClient(args.server_url, args.token).request("GET", "/api/v1/models")
    lines = [f"{'MODEL:VERSION':<28} {'TASK':<9} {'INPUT':<16} CLASSES"]
    lines += [
        f"{r['name'] + ':' + str(r['version']):<28} {r['task']:<9} {'x'.join(map(str, r['input_shape'])):<16} "
        f"{','.join(r['classes'])}"
        for r in rows
    ]
    out(args, rows, "\n".join(lines))
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    name, version = parse_ref(args.ref)
    r = AdminClient(args.server_url, args.token).request("GET", f"/api/v1/models/{name}/versions/{version}")
    lines = [
        f"{r['name']}:{r['version']}  task={r['task']} decoder={r['decoder']} input={r['input_shape']}",
        f"classes: {', '.join(r['classes'])}",
        f"{'TARGET':<12} {'BYTES':>10}  SHA256",
    ]
    lines += [f"{a['target']:<12} {a['length']:>10}  {a['sha256']}" for a in r["artifacts"]]
    if r.get("lineage"):
        lines.append("lineage: " + ", ".join(f"{k}={v}" for k, v in sorted(r["lineage"].items())))
    if r.get("report"):
        report = CompileReport.from_json(r["report"])
        lines += ["", f"compile report (host: {_host_text(report.host)}; budget {report.budget_points} pts)"]
        lines.append(table_text(report))
    lines += ["", "measured by the fleet (when devices installed it):", fleet_table_text(r.get("fleet_measurements"))]
    out(args, r, "\n".join(lines))
    return 0


def fleet_table_text(rows: list[dict[str, Any]] | None) -> str:
    """Per hardware and target: devices that timed it, median p50/p99, and how many serve it."""
    if not rows:
        return "  no device has measured this version yet"
    head = f"  {'HARDWARE':<48} {'TARGET':<10} {'DEVICES':>7} {'P50 MS':>8} {'P99 MS':>8}  CHOSEN BY"
    lines = [head]
    for x in rows:
        p50 = f"{x['p50_ms']:.2f}" if x["p50_ms"] is not None else "-"
        p99 = f"{x['p99_ms']:.2f}" if x["p99_ms"] is not None else "-"
        chosen = f"{x['chosen_by']} device(s)" if x["chosen_by"] else "-"
        failed = f"  ({x['failed']} failed: {x['error']})" if x["failed"] else ""
        lines.append(
            f"  {x['hardware'][:48]:<48} {x['target']:<10} {x['devices']:>7} {p50:>8} {p99:>8}  {chosen}{failed}"
        )
    return "\n".join(lines)


def _host_text(h: dict[str, Any]) -> str:
    flags = "".join(f" {f}" for f in ("avx2", "vnni") if h.get(f))
    gpu = f", {h['gpu']}" if h.get("gpu") else ", no GPU"
    trt = f", TensorRT {h['tensorrt']}" if h.get("tensorrt") else ""
    return f"{h.get('machine')} x{h.get('cpu_count')}{flags}{gpu}{trt}"


# -- devices --------------------------------------------------------------------------------------
def cmd_devices_enroll(args: argparse.Namespace) -> int:
    c = AdminClient(args.server_url, args.token)
    ids = args.device_id if isinstance(args.device_id, list) else [args.device_id]
    if args.from_file is not None:
        ids += [ln.strip() for ln in args.from_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not ids:
        raise SystemExit("give one or more device ids (or --from-file)")
    if getattr(args, "rotate", False):
        r = c.request("POST", f"/api/v1/devices/{ids[0]}/rotate-token")
    elif len(ids) > 1:
        return _enroll_many(args, c, ids)
    else:
        r = c.request("POST", "/api/v1/devices", json={"device_id": ids[0]})
    text = _agent_yaml(r)
    if args.out is not None:  # the token is a secret: readable by its owner only
        _write_secret(args.out, text)
        print(f"wrote {args.out} (mode 0600)")
        return 0
    out(args, r, text)
    return 0


def _enroll_many(args: argparse.Namespace, c: AdminClient, ids: list[str]) -> int:
    """One batch request (all or nothing); each device's agent.yaml written to --out-dir as ID.yaml."""
    if args.out_dir is None and not args.json:
        raise SystemExit("enrolling several devices: give --out-dir DIR (one agent.yaml each) or --json")
    rows = c.request("POST", "/api/v1/devices/batch", json={"device_ids": ids})
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for r in rows:
            _write_secret(args.out_dir / f"{r['device_id']}.yaml", _agent_yaml(r))
    out(args, rows, f"enrolled {len(rows)} device(s); agent.yaml for each in {args.out_dir} (mode 0600)")
    return 0


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.chmod(path, 0o600)


def _agent_yaml(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# agent.yaml for this device (the token is shown once; keep it secret)",
            f"device_id: {r['device_id']}",
            f"server_url: {r['server_url']}",
            f"mqtt_url: {r['mqtt_url']}",
            f"token: {r['token']}",
            f"root_public_key: {r['root_public_key']}",
            "source: {uri: '0'}",
            "data_dir: /var/lib/edgeloop",
        ]
        + (["mqtt_ca: |", *(f"  {line}" for line in r["mqtt_ca"].strip().splitlines())] if r.get("mqtt_ca") else [])
    )


def cmd_devices_show(args: argparse.Namespace) -> int:
    d = AdminClient(args.server_url, args.token).request("GET", f"/api/v1/devices/{args.device_id}")
    lines = [f"{k}: {v}" for k, v in d.items() if v not in (None, [], {}) and k != "last_prediction"]
    out(args, d, "\n".join(lines))
    return 0


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    r = AdminClient(args.server_url, args.token).request("POST", f"/api/v1/devices/{args.device_id}/revoke")
    out(args, r, f"revoked {args.device_id}: its token no longer works")
    return 0


def cmd_devices_delete(args: argparse.Namespace) -> int:
    r = AdminClient(args.server_url, args.token).request("DELETE", f"/api/v1/devices/{args.device_id}")
    out(args, r, f"deleted {args.device_id}: its credential, deployments and telemetry are gone; samples stay")
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    rows = AdminClient(args.server_url, args.token).request("GET", "/api/v1/devices")
    lines = [f"{'DEVICE':<20} {'ONLINE':<7} {'MODEL':<16} {'VER':>4} {'STATE':<12} {'FPS':>6} {'P95 MS':>7}  LAST SEEN"]
    problems = 0
    for d in rows:
        # an offline device's figures are its last ones: shown in brackets, with when it was last seen
        fps = f"{d['fps']:.1f}" if d["fps"] is not None else "-"
        p95 = f"{d['latency_ms_p95']:.1f}" if d["latency_ms_p95"] is not None else "-"
        if not d["online"] and d["fps"] is not None:
            fps, p95 = f"({fps})", f"({p95})"
        lines.append(
            f"{d['id']:<20} {'yes' if d['online'] else 'no':<7} {d['model'] or '-':<16} "
            f"{d['version'] if d['version'] is not None else '-':>4} {d['state'] or '-':<12} {fps:>6} "
            f"{p95:>7}  {d['last_seen'] or '-'}"
        )
        for sl in d.get("slots") or []:
            if sl["slot"] == "default":
                continue
            sfps = f"{sl['fps']:.1f}" if sl["fps"] is not None else "-"
            cams = ",".join(sl["sources"]) or "no camera"
            lines.append(
                f"{'':<20} slot {sl['slot']}: {sl['model'] or '-'}:{sl['version'] if sl['version'] else '-'} "
                f"{sl['state'] or '-'}, {sfps} fps, {cams}" + (f" ({sl['reason']})" if sl.get("reason") else "")
            )
        if d.get("problem"):
            problems += 1
            lines.append(f"{'':<20} ! {d['problem']}")
    if problems:
        lines.append(f"{problems} device(s) with a problem")
    out(args, rows, "\n".join(lines))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    name, version = parse_ref(args.ref)
    body: dict[str, Any] = {"model": name, "version": version, "slot": args.slot}
    if args.health_window is not None:
        body["health_window_s"] = args.health_window
    if args.min_fps_ratio is not None:
        body["min_fps_ratio"] = args.min_fps_ratio
    if args.measure_budget is not None:
        body["measure_budget_s"] = args.measure_budget
    if args.sources is not None:
        body["sources"] = [c for c in args.sources.split(",") if c]
    if args.shadow:
        body["shadow_model"], body["shadow_version"] = parse_ref(args.shadow)
        body["shadow_share"] = args.shadow_share
    r = AdminClient(args.server_url, args.token).request("PUT", f"/api/v1/devices/{args.device}/deployment", json=body)
    note = " (signed rollback)" if r.get("rollback") else ""
    where = "" if args.slot == "default" else f" in slot {args.slot}"
    out(args, r, f"{args.device}: desired {name}:{version}{where}{note}, revision {r['revision']}")
    return 0


# -- parser ---------------------------------------------------------------------------------------
def _admin_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-url", help="fleet server URL (env EDGELOOP_SERVER_URL; default http://127.0.0.1:8080)")
    p.add_argument("--token", help="admin token (env EDGELOOP_TOKEN)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeloop", description="edgeloop fleet server and admin CLI.")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "server",
        help="run the fleet server",
        description=(
            "Run the fleet server. Every flag has an EDGELOOP_* environment equivalent (e.g. EDGELOOP_ADMIN_TOKEN)."
        ),
    )
    s.add_argument("--data-dir", type=Path, help="database, artifacts, keys (env EDGELOOP_DATA_DIR)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="HTTP port (default 8080)")
    s.add_argument("--public-url", help="URL devices use to reach the API (default from host/port)")
    s.add_argument("--mqtt-url", help="external broker URL; unset: run Mosquitto (or an embedded broker)")
    s.add_argument("--mqtt-port", type=int, help="port of the broker the server runs itself (0 = any free port)")
    s.add_argument(
        "--mqtt-broker",
        choices=["auto", "mosquitto", "embedded"],
        help="without --mqtt-url: which broker to run (auto: Mosquitto if installed)",
    )
    s.add_argument(
        "--mqtt-client-id",
        help="with --mqtt-url: this replica's stable MQTT client id; the broker then keeps its session and "
        "re-delivers device state messages it had not stored (env EDGELOOP_MQTT_CLIENT_ID)",
    )
    s.add_argument(
        "--jobs",
        metavar="URL",
        help="where jobs run: local (default) or ray://HOST:PORT, a Ray cluster's job API (env EDGELOOP_JOBS_URL)",
    )
    s.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql://user@host/db (default SQLite)")
    s.add_argument("--admin-token", help="admin token (default: generated into DATA_DIR/admin_token)")
    s.set_defaults(func=cmd_server)

    m = sub.add_parser("models", help="model versions").add_subparsers(dest="sub", required=True)
    mp = m.add_parser("push", help="register an ONNX model as a new signed version")
    mp.add_argument("model", type=Path, help="MODEL.onnx")
    mp.add_argument("--name", required=True, help="model name (a-z 0-9 _ . -)")
    mp.add_argument("--task", required=True, choices=["classify", "detect"])
    mp.add_argument("--classes", required=True, help="comma-separated class names in output order")
    mp.add_argument("--decoder", choices=["classify", "yolov8"], help="output decoder (default from task)")
    mp.add_argument("--input-size", help="WxH the model must take, e.g. 640x640 (checked against the file)")
    mp.add_argument("--resize", default="stretch", choices=["stretch", "letterbox"], help="how frames are fitted")
    mp.add_argument("--color", default="RGB", choices=["RGB", "BGR"], help="channel order the model expects")
    mp.add_argument("--mean", default="0,0,0", help="per-channel mean on the 0-1 scale")
    mp.add_argument("--std", default="1,1,1", help="per-channel std on the 0-1 scale")
    _admin_flags(mp)
    mp.set_defaults(func=cmd_models_push)
    ml = m.add_parser("list", help="list model versions")
    _admin_flags(ml)
    ml.set_defaults(func=cmd_models_list)
    ms = m.add_parser("show", help="one version and its artifacts")
    ms.add_argument("ref", help="NAME:VERSION")
    _admin_flags(ms)
    ms.set_defaults(func=cmd_models_show)

    d = sub.add_parser("devices", help="devices").add_subparsers(dest="sub", required=True)
    de = d.add_parser("enroll", help="create device credentials (printed once, as agent.yaml)")
    de.add_argument("device_id", nargs="*", help="one or more device ids (several: one request, all or nothing)")
    de.add_argument("--from-file", type=Path, help="also the ids in this file, one per line")
    de.add_argument("--out", type=Path, help="write the agent.yaml here, readable by its owner only (mode 0600)")
    de.add_argument("--out-dir", type=Path, help="several devices: write DIR/ID.yaml for each (mode 0600)")
    _admin_flags(de)
    de.set_defaults(func=cmd_devices_enroll)
    dr = d.add_parser("rotate-token", help="a new credential for a device (printed once, as agent.yaml)")
    dr.add_argument("device_id")
    dr.add_argument("--out", type=Path, help="write the agent.yaml here, readable by its owner only (mode 0600)")
    _admin_flags(dr)
    dr.set_defaults(func=cmd_devices_enroll, rotate=True, from_file=None, out_dir=None)
    ds = d.add_parser("show", help="one device: state, version, figures, tags, sources")
    ds.add_argument("device_id")
    _admin_flags(ds)
    ds.set_defaults(func=cmd_devices_show)
    dv = d.add_parser("revoke", help="shut a device out: its token stops working (rotate-token re-admits it)")
    dv.add_argument("device_id")
    _admin_flags(dv)
    dv.set_defaults(func=cmd_devices_revoke)
    dd = d.add_parser("delete", help="forget a device (credential, deployments, telemetry); its samples stay")
    dd.add_argument("device_id")
    _admin_flags(dd)
    dd.set_defaults(func=cmd_devices_delete)
    dl = d.add_parser("list", help="devices with state, version, fps, last seen")
    _admin_flags(dl)
    dl.set_defaults(func=cmd_devices_list)

    add_parsers(sub, d, _admin_flags)

    zoo_cli.add_parsers(sub, _admin_flags)

    flywheel_cli.add_parsers(sub, _admin_flags)

    users_cli.add_parsers(sub, _admin_flags)

    webhooks_cli.add_parsers(sub, _admin_flags)

    keys_cli.add_parsers(sub)

    dp = sub.add_parser("deploy", help="set a device's desired model version")
    dp.add_argument("ref", help="NAME:VERSION")
    dp.add_argument("--device", required=True, help="device id")
    dp.add_argument("--slot", default="default", help="model slot on the device (agent.yaml `slots:`)")
    dp.add_argument(
        "--sources", metavar="CAM,CAM", help="cameras this slot serves from now on (by name); unset: as configured"
    )
    dp.add_argument("--health-window", type=float, help="seconds the new model must stay healthy (default 10)")
    dp.add_argument(
        "--min-fps-ratio",
        type=float,
        help="roll back when the new model runs below this share of the old one's fps (default 0.5)",
    )
    dp.add_argument("--shadow", metavar="NAME:VERSION", help="also run this candidate in shadow and report agreement")
    dp.add_argument("--shadow-share", type=float, default=0.1, help="share of frames the shadow runs on (default 0.1)")
    dp.add_argument(
        "--measure-budget",
        type=float,
        metavar="S",
        help="seconds the device times each target it can run before serving the fastest (0: serve the build "
        "host's choice untimed; default: the agent's setting, 3 s)",
    )
    _admin_flags(dp)
    dp.set_defaults(func=cmd_deploy)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "alembic.runtime.plugins", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
