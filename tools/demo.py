"""`make demo`: the whole loop on this machine.

Starts a fleet server (SQLite, local artifact store, Mosquitto if installed else an embedded broker).
On the first run the server synthesizes a dataset of shapes with exact boxes and trains the zoo's
detector on it (a few minutes on 2 CPU cores), compiles every target and registers the version with
its measured target table; later runs reuse it from the server's data dir. Then it enrolls a device,
starts its agent on a synthetic camera, deploys, and shows live detections until Ctrl-C. Nothing is
downloaded. `--fresh` starts over; `--quick` trains for one minute instead of four.
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

from model_zoo.datasets.synthetic_video import write_scene_video  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def run_cli(env: dict[str, str], *args: str, live: bool = False) -> str:
    print("    $ edgeloop " + " ".join(args), flush=True)
    if live:  # progress goes straight to the terminal
        r = subprocess.run([str(BIN / "edgeloop"), *args], env=env, stdout=subprocess.PIPE, text=True)
    else:
        r = subprocess.run([str(BIN / "edgeloop"), *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"edgeloop {args[0]} failed:\n{r.stderr or r.stdout}")
    return r.stdout


def ensure_detector(env: dict[str, str], http: httpx.Client, quick: bool) -> str:
    """The zoo's detector, trained here on synthetic scenes the first time and reused after."""
    versions = [m for m in http.get("/api/v1/models").json() if m["name"] == "shapes" and m.get("report")]
    if versions:
        ref = f"shapes:{versions[0]['version']}"
        print(f"    using {ref}, trained on an earlier run (--fresh to train again)")
        return ref
    say("synthesizing a dataset of shapes with exact boxes (first run only)")
    print(run_cli(env, "datasets", "synth", "shapes", "--preset", "easy", "--count", "1500", "--wait", live=True))
    minutes = "1" if quick else "4"
    say(f"training the detector on 2 CPU cores for up to {minutes} min, then compiling every target")
    out = run_cli(
        env, "train", "--dataset", "shapes", "--name", "shapes", "--model", "eldet",
        "--epochs", "8", "--max-minutes", minutes, "--wait", live=True,
    )  # fmt: skip
    print(out)
    return out.split("registered ", 1)[1].split()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop after this long (default: until Ctrl-C; 30 s when stdin is not a terminal)",
    )
    ap.add_argument("--dir", type=Path, default=ROOT / ".demo", help="working folder (the server data is kept)")
    ap.add_argument("--fresh", action="store_true", help="start over: forget the trained model and the device")
    ap.add_argument("--quick", action="store_true", help="train for one minute on the first run (a weaker model)")
    args = ap.parse_args()
    seconds = args.seconds if args.seconds is not None else (None if sys.stdin.isatty() else 30.0)

    work: Path = args.dir
    if args.fresh or not (work / "server" / "edgeloop.db").exists():
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(work / "agent", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    say(f"working in {work}")
    video, truth = write_scene_video(work / "camera.avi", seconds=12.0)
    print(f"    camera {video.name}: synthetic scenes of circles, squares and triangles, a new scene every second")

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

        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        ref = ensure_detector(env, http, args.quick)
        say(f"{ref}: every target measured on this machine")
        print(run_cli(env, "models", "show", ref))

        say("enrolling a device and starting its agent")
        import yaml

        n = 1 + sum(1 for d in http.get("/api/v1/devices").json() if d["id"].startswith("demo-cam-"))
        device = f"demo-cam-{n}"
        enrolled = json.loads(run_cli(env, "devices", "enroll", device, "--json"))

        cfg = {
            "device_id": device,
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

        say(f"deploying {ref} to {device}")
        t0 = time.monotonic()
        run_cli(env, "deploy", ref, "--device", device, "--health-window", "3")
        active_at = None
        say("live results (Ctrl-C to stop)" if seconds is None else f"live results for {seconds:.0f} s")
        print(
            f"    {'DEVICE':<12} {'ON':<3} {'MODEL':<10} {'STATE':<11} {'FPS':>6} {'P95 MS':>7} "
            f"{'STALE P99':>9}  LAST DETECTIONS"
        )
        end = None if seconds is None else time.monotonic() + seconds
        tty = sys.stdout.isatty()
        while end is None or time.monotonic() < end:
            if agent.poll() is not None:
                raise SystemExit(f"agent exited; see {work / 'agent.log'}")
            d = http.get(f"/api/v1/devices/{device}").json()
            if active_at is None and d["version"] is not None and d["state"] in ("active", "committed"):
                active_at = time.monotonic() - t0
            preds = d["last_prediction"] or []
            shown = ", ".join(f"{p['label']} {p['score']:.2f}" for p in preds[:4]) or "-"
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
