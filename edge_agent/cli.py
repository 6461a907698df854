"""`edgeloop-agent`: the device daemon."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
