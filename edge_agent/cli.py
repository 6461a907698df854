"""`edgeloop-agent`: the device daemon."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from edge_agent.agent import Agent
from edge_agent.bench import run, run_cameras
from edge_agent.config import AgentConfig
from edge_agent.runtimes import RuntimeOptions


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:

    overrides = {
        "device_id": args.device_id,
        "server_url": args.server_url,
        "mqtt_url": args.mqtt_url,
        "token": args.token,
        "sources": args.source,
        "data_dir": args.data_dir,
        "root_public_key": args.root_public_key,
        "telemetry_interval_s": args.telemetry_interval,
    }
    try:
        cfg = AgentConfig.load(args.config, overrides)
    except (OSError, ValueError, ValidationError) as exc:
        print(f"edgeloop-agent: bad configuration: {exc}", file=sys.stderr)
        return 2
    agent = Agent(cfg).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    agent.stop()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:

    if not args.model.is_file():
        print(f"edgeloop-agent bench: {args.model}: no such file", file=sys.stderr)
        return 2
    opts = RuntimeOptions(intra_threads=args.threads or 0)
    classes = args.classes.split(",") if args.classes else None
    batch = args.batch or args.cameras
    try:
        if args.cameras:
            r = run_cameras(args.model, args.source, args.cameras, batch, args.seconds, args.fps, opts)
        else:
            r = run(args.model, args.source, args.seconds, classes, opts, sweep=args.sweep)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"edgeloop-agent bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(r, indent=2))
    elif args.cameras:
        _print_cameras(r, args.cameras, args.fps, batch)
    else:
        _print_loop(r)
    return 0


def _print_loop(r: dict) -> None:
    print(f"model {r['model']}  source {r['source']}  {r['seconds']:.0f} s  {r['cores']} cores")
    print(f"  raw model fps      {r['raw_fps']:>8.1f}   (best of {r['raw_fps_by_setting']})")
    print(f"  edgeloop loop fps  {r['loop_fps']:>8.1f}   loop_over_raw   {r['loop_over_raw']}")
    if r["loop_fps_by_setting"]:
        ls = r["loop_setting"]
        print(f"  loop by setting    {r['loop_fps_by_setting']}")
        print(
            f"  best for this device: runtime: {{intra_threads: {ls['intra_threads']}, "
            f"allow_spinning: {str(ls['allow_spinning']).lower()}}}   (agent.yaml)"
        )
    print(f"  naive loop fps     {r['naive_fps']:>8.1f}   loop_over_naive {r['loop_over_naive']}")
    print(
        f"  staleness p50/p99  {r['staleness_ms_p50']:.1f} / {r['staleness_ms_p99']:.1f} ms   dropped {r['dropped']}"
        f"   decode {r['decode_fps']} fps   preprocess {r['preprocess_kernel']}"
    )


def _print_cameras(r: dict, cameras: int, fps: float, batch: int) -> None:
    print(f"model {r['model']}  {cameras} cameras x {fps:g} fps  {r['cores']} cores")
    print(
        f"  {'loop':<9} {'offered':>8} {'served':>8} {'dropped':>8} {'stale p99 ms':>13} {'slowest cam':>12}  batches"
    )
    for key in ("batch_1", f"batch_{batch}"):
        x = r[key]
        print(
            f"  {key:<9} {x['offered_fps']:>8.1f} {x['served_fps']:>8.1f} {x['dropped']:>8} "
            f"{x['staleness_ms_p99']:>13.1f} {x['slowest_camera_fps']:>12.1f}  {x['batch_histogram']}"
        )
    print(f"  served, batched / batch-1: {r['served_ratio']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeloop-agent", description="edgeloop edge agent: runs models on cameras.")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="connect to the fleet, converge to the desired model, run the camera loop",
        description="Run the agent. Flags override values from --config.",
    )
    r.add_argument("--config", type=Path, help="agent.yaml (see AgentConfig for its keys)")
    r.add_argument("--device-id", help="this device's enrolled id")
    r.add_argument("--server-url", help="fleet server URL, e.g. http://fleet:8080")
    r.add_argument("--mqtt-url", help="broker URL, e.g. mqtt://fleet:1883")
    r.add_argument("--token", help="device credential from `edgeloop devices enroll` (prefer the config file)")
    r.add_argument("--root-public-key", help="fleet root public key (base64), from enrollment")
    r.add_argument(
        "--source",
        action="append",
        help="FILE | rtsp://… | http://… (MJPEG) | 0 (USB index) | GStreamer pipeline; repeat for more",
    )
    r.add_argument("--data-dir", type=Path, help="where models and update state live")
    r.add_argument("--telemetry-interval", type=float, help="seconds between telemetry messages")
    r.set_defaults(func=cmd_run)
    b = sub.add_parser(
        "bench",
        help="measure the real loop against the raw model and a naive loop",
        description="Runs the agent's loop on a model and source and reports, from one run: loop fps, "
        "raw model fps (best thread setting), a naive sequential loop's fps, their ratios, "
        "frame staleness and drops. A file source is read as fast as it decodes.",
    )
    b.add_argument("--model", type=Path, required=True, help="FILE.onnx")
    b.add_argument("--source", required=True, help="video file, camera index or stream URL")
    b.add_argument("--seconds", type=float, default=5.0, help="length of each measured run (default 5)")
    b.add_argument("--classes", help="comma-separated class names (default class0..N)")
    b.add_argument("--threads", type=int, help="intra-op threads for the loop's model (default: one per core)")
    b.add_argument(
        "--sweep", action="store_true", help="try each thread / spinning setting in the real loop and keep the best"
    )
    b.add_argument("--cameras", type=int, help="run N copies of the source as N paced cameras, batch-1 vs batched")
    b.add_argument("--batch", type=int, help="with --cameras: most frames per inference (default: N)")
    b.add_argument("--fps", type=float, default=30.0, help="with --cameras: each camera's frame rate (default 30)")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
