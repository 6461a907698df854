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

from edge_agent.protocol.manifest import parse_ref  # noqa: E402
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


def start_agent(env: dict[str, str], work: Path, device: str, video: Path, name: str, log) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    import yaml

    enrolled = json.loads(run_cli(env, "devices", "enroll", device, "--json"))
    cfg = {
        "device_id": device,
        "server_url": enrolled["server_url"],
        "mqtt_url": enrolled["mqtt_url"],
        "token": enrolled["token"],
        "root_public_key": enrolled["root_public_key"],
        "source": {"uri": str(video)},
        "data_dir": str(work / name),
        "telemetry_interval_s": 1.0,
    }
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    cfg_path.chmod(0o600)
    print(f"    $ edgeloop-agent run --config {cfg_path}")
    return subprocess.Popen(
        [str(BIN / "edgeloop-agent"), "run", "--config", str(cfg_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def night_map(http: httpx.Client, ref: str, work: Path) -> dict[str, float]:
    """mAP of a registered version's FP32 artifact on held-out night scenes (exact ground truth)."""
    from edge_agent.protocol.manifest import InputSpec
    from model_zoo.datasets.store import DatasetStore, synthesize
    from model_zoo.evaluate import evaluate_onnx

    store = DatasetStore(work / "eval")
    hold = (
        store.load("night")
        if store.versions("night")
        else synthesize(store, "night", "night", 150, 3000, val_fraction=0.99)
    )
    name, version = parse_ref(ref)
    mv = http.get(f"/api/v1/models/{name}/versions/{version}").json()
    art = next(a for a in mv["artifacts"] if a["target"] == "onnx-fp32")
    path = work / "eval" / f"{name}-{version}.onnx"
    path.write_bytes(http.get(art["url"]).content)
    return evaluate_onnx(path, hold, "detect", InputSpec(shape=tuple(mv["input_shape"]), resize="letterbox"))


def flywheel_turn(
    env: dict[str, str],
    http: httpx.Client,
    work: Path,
    ref: str,
    n: int,
    procs: list,
    log,
    quick: bool,  # type: ignore[no-untyped-def]
) -> None:
    """A camera in a shifted domain sends hard samples; a simulated annotator labels them from the
    generator's exact ground truth; the retrain policy fine-tunes, gates and rolls the new version out."""
    from edge_agent.flywheel.phash import hamming, phash
    from model_zoo.datasets.synthetic_scenes import preset, render_scene

    say("flywheel: a second camera watches the night (dark, blue, striped backgrounds: a shifted domain)")
    scenes, seed = 80, 2000
    night, _ = write_scene_video(work / "night.avi", seconds=scenes, preset_name="night", seed=seed)
    device = f"demo-night-{n}"
    procs.append(start_agent(env, work, device, night, "agent-night", log))
    run_cli(env, "deploy", ref, "--device", device, "--health-window", "3")
    before = night_map(http, ref, work)
    print(f"    {ref} on held-out night scenes: mAP50 {before['mAP50']:.3f}, mAP50-95 {before['mAP50_95']:.3f}")
    mining = {
        "enabled": True,
        "strategies": {
            "confidence": {"params": {"low": 0.25, "high": 0.6}, "limits": {"per_minute": 120}},
            "random": {"params": {"share": 0.05}, "limits": {"per_minute": 30}},
        },
        "dedup_distance": 4,
    }
    print(f"    $ PUT /api/v1/devices/{device}/mining  (confidence band 0.25-0.6, 5 % random, near-duplicates dropped)")
    http.put(f"/api/v1/devices/{device}/mining", json=mining).raise_for_status()
    want = 30 if quick else 40
    say(f"waiting for {want} hard samples from {device}")
    deadline = time.monotonic() + 240
    rows: list = []
    while time.monotonic() < deadline:
        rows = http.get("/api/v1/samples", params={"device": device, "limit": 1000}).json()["samples"]
        print(f"\r    {len(rows)} samples received", end="" if sys.stdout.isatty() else "\n", flush=True)
        if len(rows) >= want:
            break
        time.sleep(2)
    print()
    truth = [render_scene(preset("night"), seed, i, (320, 240)) for i in range(scenes)]
    hashes = [phash(t.image) for t in truth]
    classes = preset("night").classes
    say(f"SIMULATED ANNOTATOR: labelling {len(rows)} samples from the generator's exact ground truth")
    import cv2
    import numpy as np

    for s in rows:
        img = cv2.imdecode(np.frombuffer(http.get(s["image_url"]).content, np.uint8), cv2.IMREAD_COLOR)
        scene = truth[int(np.argmin([hamming(phash(img), h) for h in hashes]))]
        labels = [
            {"label": classes[c], "box": [float(v) for v in b]} for b, c in zip(scene.boxes, scene.labels, strict=True)
        ]
        http.post(f"/api/v1/samples/{s['id']}/review", json={"action": "correct", "labels": labels}).raise_for_status()
    print(run_cli(env, "samples", "list", "--device", device, "--limit", "5"))
    name, _ = parse_ref(ref)
    epochs = "2" if quick else "3"
    seen = max([j["id"] for j in http.get("/api/v1/jobs").json() if j["kind"] == "retrain"] or [0])
    run_cli(
        env, "flywheel", "policy", name, "--dataset", "shapes", "--min-labels", str(len(rows)), "--epochs", epochs,
        "--rollout", "auto", "--selector", f"device={device}", "--canary", "1", "--bake", "5",
    )  # fmt: skip
    say("the retrain policy fires: fine-tune on shapes + the new labels, compile, gate, roll out")
    job = None
    deadline = time.monotonic() + 900
    shown = ""
    tty = sys.stdout.isatty()
    while time.monotonic() < deadline:
        jobs = [j for j in http.get("/api/v1/jobs").json() if j["kind"] == "retrain" and j["id"] > seen]
        job = jobs[0] if jobs else None
        if job:
            line = f"    job {job['id']} {job['state']:<10} {job['progress'] * 100:5.1f}%  {job['message'][:70]:<70}"
            if line != shown:
                print(("\r" + line) if tty else line.rstrip(), end="" if tty else "\n", flush=True)
                shown = line
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
        time.sleep(2)
    print()
    run_cli(env, "flywheel", "policy", name, "--dataset", "shapes", "--disable")
    if not job or job["state"] != "succeeded":
        print(f"    retrain did not finish: {job and (job.get('error') or job['state'])}")
        return device
    result = job["result"]
    gate = result["gate"]
    print(f"    gate: {gate['reason']}; hard samples in the holdout: {gate['hard_samples']}")
    if result.get("rejected"):
        print("    the candidate was rejected; the fleet keeps " + ref)
        return device
    after = night_map(http, result["model"], work)
    say(
        f"one flywheel turn on the night domain: mAP50 {before['mAP50']:.3f} -> {after['mAP50']:.3f}, "
        f"mAP50-95 {before['mAP50_95']:.3f} -> {after['mAP50_95']:.3f} ({ref} -> {result['model']})"
    )
    print(f"    canary rollout {result.get('rollout')}: edgeloop rollout status {result.get('rollout')}")
    return device


def live(http: httpx.Client, devices: list[str], seconds: float | None, procs: list, work: Path, t0: float):  # type: ignore[no-untyped-def]
    """Print each device's line once a second; returns seconds from t0 until the first became active."""
    say("live results (Ctrl-C to stop)" if seconds is None else f"live results for {seconds:.0f} s")
    print(
        f"    {'DEVICE':<14} {'ON':<3} {'MODEL':<10} {'STATE':<11} {'FPS':>6} {'P95 MS':>7} "
        f"{'STALE P99':>9}  LAST DETECTIONS"
    )
    end = None if seconds is None else time.monotonic() + seconds
    tty = sys.stdout.isatty() and len(devices) == 1
    active_at = None
    while end is None or time.monotonic() < end:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process exited; see the logs in {work}")
        for device in devices:
            d = http.get(f"/api/v1/devices/{device}").json()
            if active_at is None and d["version"] is not None and d["state"] in ("active", "committed"):
                active_at = time.monotonic() - t0
            preds = d["last_prediction"] or []
            shown = ", ".join(f"{p['label']} {p['score']:.2f}" for p in preds[:4]) or "-"
            line = (
                f"    {d['id']:<14} {'yes' if d['online'] else 'no':<3} "
                f"{(d['model'] or '-') + ':' + str(d['version'] or '-'):<10} {d['state'] or '-':<11} "
                f"{d['fps'] or 0:>6.1f} {d['latency_ms_p95'] or 0:>7.2f} {d['staleness_ms_p99'] or 0:>9.1f}  "
                f"{shown}"
            )
            print(("\r" + line + "   ") if tty else line, end="" if tty else "\n", flush=True)
        time.sleep(1.0)
    print()
    return active_at


def console_login(http: httpx.Client, work: Path) -> tuple[str, str]:
    """A console account for the demo (admin role), its password kept beside the server data."""
    import secrets

    path = work / "server" / "console_password"
    if not path.exists():
        path.write_text("Demo-" + secrets.token_urlsafe(12))
        path.chmod(0o600)
    password = path.read_text().strip()
    r = http.post("/api/v1/users", json={"name": "demo-admin", "role": "admin", "password": password})
    if r.status_code not in (201, 422):  # 422: made on an earlier run
        r.raise_for_status()
    return "demo-admin", password


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
    ap.add_argument(
        "--no-flywheel", dest="flywheel", action="store_false", help="skip the night camera and the retrain turn"
    )
    args = ap.parse_args()
    seconds = args.seconds if args.seconds is not None else (None if sys.stdin.isatty() else 30.0)

    work: Path = args.dir
    if args.fresh or not (work / "server" / "edgeloop.db").exists():
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(work / "agent", ignore_errors=True)
    shutil.rmtree(work / "agent-night", ignore_errors=True)
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
        user, password = console_login(http, work)
        print(f"    console:     {url}/console   (user {user}, password {password}; an admin)")
        ref = ensure_detector(env, http, args.quick)
        say(f"{ref}: every target measured on this machine")
        print(run_cli(env, "models", "show", ref))

        say("enrolling a device and starting its agent")
        n = 1 + sum(1 for d in http.get("/api/v1/devices").json() if d["id"].startswith("demo-cam-"))
        device = f"demo-cam-{n}"
        agent = start_agent(env, work, device, video, "agent", agent_log)
        procs.append(agent)

        say(f"deploying {ref} to {device}")
        t0 = time.monotonic()
        run_cli(env, "deploy", ref, "--device", device, "--health-window", "3")
        first = 20.0 if args.flywheel and seconds is None else seconds
        active_at = live(http, [device], first, procs, work, t0)
        if active_at is not None:
            say(f"deploy -> active took {active_at:.2f} s (polled once a second; tools/bench_deploy.py measures it)")
        if args.flywheel:
            night = flywheel_turn(env, http, work, ref, n, procs, agent_log, args.quick)
            if seconds is None:
                live(http, [device, night], None, procs, work, t0)
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
