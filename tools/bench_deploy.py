"""Time from `edgeloop deploy` to the agent reporting the new version `active`, on this machine.

Runs a real Mosquitto, a real `edgeloop server` and a real agent on a generated video; deploys N
successive versions and timestamps every reported state change from an MQTT subscription (the same
messages the server consumes). Prints a table and writes JSON (default bench-results/bench_deploy.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_zoo.builders.color_classifier import build_color_classifier  # noqa: E402
from model_zoo.datasets.synthetic_video import write_color_video  # noqa: E402
from tests.helpers import Server, start_agent, start_mosquitto, wait_for  # noqa: E402

STAGES = ("downloading", "verifying", "preparing", "warming", "active", "committed")


class ReportTap:
    def __init__(self, port: int, device: str) -> None:
        self.seen: list[tuple[float, int | None, str]] = []  # (t, target_version, state)
        self.lock = threading.Lock()
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        c.on_message = self._on
        c.connect("127.0.0.1", port)
        c.subscribe(f"edgeloop/v1/devices/{device}/reported", 1)
        c.loop_start()
        self.c = c

    def _on(self, c, u, m) -> None:  # type: ignore[no-untyped-def]
        slot = json.loads(m.payload)["slots"].get("default", {})
        with self.lock:
            self.seen.append((time.monotonic(), slot.get("target_version"), slot.get("state")))

    def first(self, version: int, state: str, after: float) -> float | None:
        with self.lock:
            for t, v, s in self.seen:
                if t >= after and v == version and s == state:
                    return t
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--health-window", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench_deploy.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-"))
    mq, port = start_mosquitto(work)
    server = Server(work / "server", f"mqtt://127.0.0.1:{port}")
    video = write_color_video(work / "cam.avi", seconds=10)
    agent = None
    rows = []
    try:
        for v in range(1, args.runs + 1):
            m = build_color_classifier(work / f"m{v}.onnx", sharpness=10.0 + v)
            server.push(m)
        enrolled = server.enroll("bench-cam")
        tap = ReportTap(port, "bench-cam")
        agent = start_agent(work, enrolled, str(video))
        wait_for(lambda: server.device("bench-cam")["online"], 30, "agent online")
        for v in range(1, args.runs + 1):
            t0 = time.monotonic()
            server.http.put(
                "/api/v1/devices/bench-cam/deployment",
                json={"model": "colors", "version": v, "health_window_s": args.health_window},
            ).raise_for_status()
            t_api = time.monotonic()
            wait_for(lambda v=v, t0=t0: tap.first(v, "committed", t0), 60, f"v{v} committed")  # type: ignore[misc]
            row = {"version": v, "api_ms": (t_api - t0) * 1000}
            for st in STAGES:
                t = tap.first(v, st, t0)
                row[f"{st}_ms"] = None if t is None else (t - t0) * 1000
            rows.append(row)
        tap.c.loop_stop()
    finally:
        if agent:
            agent.stop()
        server.stop()
        mq.stop()

    def med(key: str) -> float:
        vals = [r[key] for r in rows if r[key] is not None]
        return statistics.median(vals) if vals else float("nan")

    print(
        f"deploy -> state reported, ms after the deploy call started (median of {len(rows)}; "
        f"health window {args.health_window}s)"
    )
    print(f"{'stage':<14}{'median ms':>10}{'min':>9}{'max':>9}")
    for key in ["api_ms"] + [f"{s}_ms" for s in STAGES]:
        vals = [r[key] for r in rows if r[key] is not None]
        print(f"{key[:-3]:<14}{med(key):>10.1f}{min(vals):>9.1f}{max(vals):>9.1f}")
    result = {
        "bench": "deploy_to_active",
        "runs": rows,
        "median_deploy_to_active_ms": med("active_ms"),
        "median_deploy_to_committed_ms": med("committed_ms"),
        "health_window_s": args.health_window,
        "machine": {
            "cpu_count": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nmedian deploy -> active: {result['median_deploy_to_active_ms']:.1f} ms  (JSON: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
