"""`make demo`: the whole loop on this machine.

Starts a fleet server (SQLite, local artifact store, Mosquitto if installed else an embedded broker),
generates a camera video and a small ONNX colour classifier, pushes the model, enrolls one device,
starts its agent, deploys, and shows live results until Ctrl-C. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from model_zoo.builders.color_classifier import build_color_classifier  # noqa: E402
from model_zoo.datasets.synthetic_video import write_color_video  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def run_cli(env: dict[str, str], *args: str) -> str:
    print("    $ edgeloop " + " ".join(args), flush=True)
    r = subprocess.run([str(BIN / "edgeloop"), *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"edgeloop {args[0]} failed:\n{r.stderr}")
    return r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop after this long (default: until Ctrl-C; 30 s when stdin is not a terminal)",
    )
    ap.add_argument("--dir", type=Path, default=ROOT / ".demo", help="working folder (recreated)")
    args = ap.parse_args()
    seconds = args.seconds if args.seconds is not None else (None if sys.stdin.isatty() else 30.0)

    work: Path = args.dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    say(f"working in {work}")
    model = build_color_classifier(work / "colors.onnx")
    video = write_color_video(work / "camera.avi", seconds=12.0)
    print(f"    model {model.name} (ONNX colour classifier), camera {video.name} (synthetic, 30 fps)")

    port = free_port()
    server_log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "edgeloop"), "server", "--data-dir", str(work / "server"), "--port", str(port), "--mqtt-port", "0"],
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs = [server]
    agent_log = open(work / "agent.log", "w")
    try:
        url = f"http://127.0.0.1:{port}"
        say("starting the fleet server")
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited; see {work / 'server.log'}")
            try:
                if httpx.get(url + "/healthz", timeout=1).json().get("mqtt_connected"):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server did not come up; see {work / 'server.log'}")
            time.sleep(0.2)
        token = (work / "server" / "admin_token").read_text().strip()
        env = {**os.environ, "EDGELOOP_SERVER_URL": url, "EDGELOOP_TOKEN": token}
        print(f"    API:         {url}   (OpenAPI docs at {url}/docs)")
        print(f"    admin token: {token}   (also in {work / 'server' / 'admin_token'})")

        say("pushing the model (signed manifest)")
        ref = run_cli(
            env, "models", "push", str(model), "--name", "colors", "--task", "classify", "--classes", "red,green,blue"
        ).strip()
        print(f"    registered {ref}")

        say("enrolling a device and starting its agent")
        enrolled = json.loads(run_cli(env, "devices", "enroll", "demo-cam-1", "--json"))
        import yaml

        cfg = {
            "device_id": "demo-cam-1",
            "server_url": enrolled["server_url"],
            "mqtt_url": enrolled["mqtt_url"],
            "token": enrolled["token"],
            "root_public_key": enrolled["root_public_key"],
            "source": {"uri": str(video)},
            "data_dir": str(work / "agent"),
            "telemetry_interval_s": 1.0,
        }
        cfg_path = work / "agent.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        cfg_path.chmod(0o600)
        agent = subprocess.Popen(
            [str(BIN / "edgeloop-agent"), "run", "--config", str(cfg_path)],
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(agent)
        print(f"    $ edgeloop-agent run --config {cfg_path}")

        say(f"deploying {ref} to demo-cam-1")
        t0 = time.monotonic()
        run_cli(env, "deploy", ref, "--device", "demo-cam-1", "--health-window", "3")
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        active_at = None
        say("live results (Ctrl-C to stop)" if seconds is None else f"live results for {seconds:.0f} s")
        print(
            f"    {'DEVICE':<12} {'ON':<3} {'MODEL':<10} {'STATE':<11} {'FPS':>6} {'P95 MS':>7} "
            f"{'STALE P99':>9}  LAST PREDICTION"
        )
        end = None if seconds is None else time.monotonic() + seconds
        tty = sys.stdout.isatty()
        while end is None or time.monotonic() < end:
            if agent.poll() is not None:
                raise SystemExit(f"agent exited; see {work / 'agent.log'}")
            d = http.get("/api/v1/devices/demo-cam-1").json()
            if active_at is None and d["version"] is not None and d["state"] in ("active", "committed"):
                active_at = time.monotonic() - t0
            pred = d["last_prediction"][0] if d["last_prediction"] else None
            shown = f"{pred['label']} ({pred['score']:.2f})" if pred else "-"
            line = (
                f"    {d['id']:<12} {'yes' if d['online'] else 'no':<3} "
                f"{(d['model'] or '-') + ':' + str(d['version'] or '-'):<10} {d['state'] or '-':<11} "
                f"{d['fps'] or 0:>6.1f} {d['latency_ms_p95'] or 0:>7.2f} {d['staleness_ms_p99'] or 0:>9.1f}  "
                f"{shown}"
            )
            print(("\r" + line + "   ") if tty else line, end="" if tty else "\n", flush=True)
            time.sleep(1.0)
        print()
        if active_at is not None:
            say(f"deploy -> active took {active_at:.2f} s (polled once a second; tools/bench_deploy.py measures it)")
    except KeyboardInterrupt:
        print()
    finally:
        say("stopping")
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        server_log.close()
        agent_log.close()
        print(f"    logs: {work / 'server.log'}, {work / 'agent.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
