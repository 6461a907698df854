"""`make demo`: the whole loop on this machine, as often as you like.

Starts a fleet server (SQLite, local artifact store, Mosquitto if installed else an embedded broker) on
port 8470. On the first run the server synthesizes a dataset of shapes with exact boxes and trains the
zoo's detector on it (a few minutes on 2 CPU cores), compiles every target and registers the version with
its measured target table; later runs reuse it from the server's data dir. Then it starts two agents
(`demo-cam`, and `demo-night` on a camera in a shifted domain, new scenes each run), deploys, runs one
flywheel turn (hard samples, labels, retrain, gate, canary rollout) and ends with a summary. In a terminal
the stack stays up until Ctrl-C. Nothing is downloaded. `--fresh` starts over; `--quick` is a small,
fast turn (a weaker model) for trying it out and for the test suite.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from edge_agent.protocol.manifest import parse_ref  # noqa: E402
from model_zoo.datasets.synthetic_video import write_scene_video  # noqa: E402

DEFAULT_PORT = 8470


@dataclass(frozen=True)
class Plan:
    """How big a turn is: the full demo, or the quick one the test suite runs twice."""

    scenes: int  # synthetic training scenes
    epochs: int
    minutes: float  # training time cap
    targets: str | None  # compile targets (None: all)
    night_scenes: int  # seconds of the night camera's video, one scene a second
    want: int  # hard samples to wait for
    retrain_epochs: int
    first_live_s: float
    holdout: int  # held-out night scenes the before/after figures are measured on
    size: int | None = None  # the detector's input size (None: the architecture's, 256)
    measure_s: float = 1.5  # seconds a compile times each target per batch and thread count


FULL = Plan(1500, 8, 4.0, None, 80, 40, 3, 20.0, 150)
QUICK = Plan(200, 4, 0.5, "onnx-fp32", 30, 8, 1, 3.0, 40, size=128, measure_s=0.3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


T0 = time.monotonic()


def say(text: str) -> None:
    m, s = divmod(int(time.monotonic() - T0), 60)
    line = f"==> [{m}:{s:02d}] {text}"
    print(f"\033[1m{line}\033[0m" if sys.stdout.isatty() else line, flush=True)


def run_cli(env: dict[str, str], *args: str, live: bool = False, show: bool = True) -> str:
    if show:
        print("    $ edgeloop " + " ".join(args), flush=True)
    if live:  # progress goes straight to the terminal
        r = subprocess.run([str(BIN / "edgeloop"), *args], env=env, stdout=subprocess.PIPE, text=True)
    else:
        r = subprocess.run([str(BIN / "edgeloop"), *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"edgeloop {args[0]} failed:\n{r.stderr or r.stdout}")
    return r.stdout


def ensure_detector(env: dict[str, str], http: httpx.Client, plan: Plan) -> str:
    """The zoo's detector, trained here on synthetic scenes the first time; later runs take the newest."""
    versions = [m for m in http.get("/api/v1/models").json() if m["name"] == "shapes" and m.get("report")]
    if versions:
        ref = f"shapes:{max(m['version'] for m in versions)}"
        print(f"    using {ref}, trained on an earlier run (--fresh to train again)")
        return ref
    say(f"synthesizing {plan.scenes} scenes of shapes with exact boxes (first run only)")
    print(run_cli(env, "datasets", "synth", "shapes", "--preset", "easy", "--count", str(plan.scenes), "--wait"))
    what = "every target" if plan.targets is None else plan.targets.replace(",", " and ")
    say(f"training the detector on this machine's CPU for up to {plan.minutes:g} min, then compiling {what}")
    targets = ["--targets", plan.targets] if plan.targets else []
    targets += ["--size", str(plan.size)] if plan.size else []
    out = run_cli(
        env, "train", "--dataset", "shapes", "--name", "shapes", "--model", "eldet", "--epochs", str(plan.epochs),
        "--max-minutes", str(plan.minutes), *targets, "--wait", live=True,
    )  # fmt: skip
    print(out)
    return out.split("registered ", 1)[1].split()[0]


def ensure_device(env: dict[str, str], http: httpx.Client, device: str) -> dict[str, Any]:
    """The demo's devices keep stable names: enrolled on the first run, a fresh credential on later ones."""
    if http.get(f"/api/v1/devices/{device}").status_code == 200:
        return dict(json.loads(run_cli(env, "devices", "rotate-token", device, "--json")))
    return dict(json.loads(run_cli(env, "devices", "enroll", device, "--json")))


def forget_old_devices(env: dict[str, str], http: httpx.Client) -> None:
    """Earlier versions of the demo numbered their devices (demo-cam-3): remove those rows."""
    old = [
        d["id"]
        for d in http.get("/api/v1/devices").json()
        if d["id"].rsplit("-", 1)[0] in ("demo-cam", "demo-night") and d["id"].rsplit("-", 1)[-1].isdigit()
    ]
    for device in old:
        r = http.delete(f"/api/v1/devices/{device}")
        print(f"    removed {device} from an earlier run" if r.status_code == 200 else f"    kept {device}: {r.text}")


def start_agent(  # type: ignore[no-untyped-def]
    env: dict[str, str], http: httpx.Client, work: Path, device: str, video: Path, name: str, log
) -> subprocess.Popen:
    import yaml

    enrolled = ensure_device(env, http, device)
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


def night_map(http: httpx.Client, ref: str, work: Path, holdout: int) -> dict[str, float]:
    """mAP of a registered version's FP32 artifact on held-out night scenes (exact ground truth)."""
    from edge_agent.protocol.manifest import InputSpec
    from model_zoo.datasets.store import DatasetStore, synthesize
    from model_zoo.evaluate import evaluate_onnx

    store = DatasetStore(work / "eval")
    hold = (
        store.load("night")
        if store.versions("night")
        else synthesize(store, "night", "night", holdout, 3000, val_fraction=0.99)
    )
    name, version = parse_ref(ref)
    mv = http.get(f"/api/v1/models/{name}/versions/{version}").json()
    art = next(a for a in mv["artifacts"] if a["target"] == "onnx-fp32")
    path = work / "eval" / f"{name}-{version}.onnx"
    path.write_bytes(http.get(art["url"]).content)
    return evaluate_onnx(path, hold, "detect", InputSpec(shape=tuple(mv["input_shape"]), resize="letterbox"))


def wait_samples(http: httpx.Client, device: str, since: int, want: int, stall_s: float) -> list[dict[str, Any]]:
    """Samples newer than `since`, until `want` arrived or none came for `stall_s` (a camera that found all it
    could); the count is shown as it grows."""
    rows: list[dict[str, Any]] = []
    last_growth, shown = time.monotonic(), -1
    tty = sys.stdout.isatty()
    while len(rows) < want and time.monotonic() - last_growth < stall_s:
        got = http.get("/api/v1/samples", params={"device": device, "limit": 1000}).json()["samples"]
        new = [r for r in got if r["id"] > since]
        if len(new) > len(rows):
            last_growth = time.monotonic()
        rows = new
        if len(rows) != shown:
            print(f"\r    {len(rows)}/{want} hard samples received", end="" if tty else "\n", flush=True)
            shown = len(rows)
        time.sleep(1.0)
    if tty:
        print()
    return rows[:want] if len(rows) > want else rows


def wait_job(http: httpx.Client, kind: str, after: int, stall_s: float) -> dict[str, Any] | None:
    """The first `kind` job newer than `after`, followed until it ends. The wait is driven by progress: it goes
    on as long as the job moves, and gives up only when nothing changed for `stall_s`."""
    tty = sys.stdout.isatty()
    job, shown, last_change = None, "", time.monotonic()
    while time.monotonic() - last_change < stall_s:
        jobs = [j for j in http.get("/api/v1/jobs").json() if j["kind"] == kind and j["id"] > after]
        job = min(jobs, key=lambda j: j["id"]) if jobs else None
        if job:
            line = f"    job {job['id']} {job['state']:<9} {job['progress'] * 100:5.1f}%  {job['message'][:90]}"
            if line != shown:
                print(("\r" + line.ljust(120)) if tty else line, end="" if tty else "\n", flush=True)
                shown, last_change = line, time.monotonic()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
        time.sleep(1.0)
    if tty:
        print()
    if job and job["state"] not in ("succeeded", "failed", "cancelled"):
        print(
            f"    job {job['id']} made no progress for {stall_s:.0f} s; leaving it to the server (edgeloop jobs list)"
        )
    return job


def flywheel_turn(  # type: ignore[no-untyped-def]
    env: dict[str, str],
    http: httpx.Client,
    work: Path,
    ref: str,
    run: int,
    plan: Plan,
    procs: list,
    log,
    summary: dict[str, Any],
) -> str:
    """A camera in a shifted domain sends hard samples; a simulated annotator labels them from the
    generator's exact ground truth; the retrain policy fine-tunes, gates and rolls the new version out.
    Each run's night camera shows new scenes (its seed follows the run number)."""
    from edge_agent.flywheel.phash import hamming, phash
    from model_zoo.datasets.synthetic_scenes import preset, render_scene

    say("flywheel: a second camera watches the night (dark, blue, striped backgrounds: a shifted domain)")
    seed = 20_000 + run  # never the held-out night scenes' seed (3000)
    night, _ = write_scene_video(work / "night.avi", seconds=plan.night_scenes, preset_name="night", seed=seed)
    print(f"    night camera: {plan.night_scenes} new scenes (seed {seed}, run {run})")
    device = "demo-night"
    procs.append(start_agent(env, http, work, device, night, "agent-night", log))
    run_cli(env, "deploy", ref, "--device", device, "--health-window", "3")
    before = night_map(http, ref, work, plan.holdout)
    summary["night_before"] = (ref, before)
    print(f"    {ref} on held-out night scenes: mAP50 {before['mAP50']:.3f}, mAP50-95 {before['mAP50_95']:.3f}")
    mining = {
        "enabled": True,
        "strategies": {
            "confidence": {"params": {"low": 0.25, "high": 0.6}, "limits": {"per_minute": 120}},
            "random": {"params": {"share": 0.05}, "limits": {"per_minute": 30}},
        },
        "dedup_distance": 4,
    }
    since = max([r["id"] for r in http.get("/api/v1/samples", params={"limit": 1}).json()["samples"]] or [0])
    print(f"    $ PUT /api/v1/devices/{device}/mining  (confidence band 0.25-0.6, 5 % random, near-duplicates dropped)")
    http.put(f"/api/v1/devices/{device}/mining", json=mining).raise_for_status()
    say(f"waiting for {plan.want} hard samples from {device}")
    rows = wait_samples(http, device, since, plan.want, stall_s=60.0)
    summary["samples"] = len(rows)
    if len(rows) < 3:
        say(f"only {len(rows)} hard sample(s) arrived: not enough to retrain on this turn")
        return device
    truth = [render_scene(preset("night"), seed, i, (320, 240)) for i in range(plan.night_scenes)]
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
    seen = max([j["id"] for j in http.get("/api/v1/jobs").json()] or [0])
    run_cli(
        env, "flywheel", "policy", name, "--dataset", "shapes", "--min-labels", str(len(rows)),
        "--epochs", str(plan.retrain_epochs), "--rollout", "auto", "--selector", f"device={device}",
        "--canary", "1", "--bake", "5", "--enable",
    )  # fmt: skip
    say("the retrain policy fires: fine-tune on shapes + the new labels, compile, gate, roll out")
    job = wait_job(http, "retrain", seen, stall_s=600.0)
    run_cli(env, "flywheel", "policy", name, "--disable")
    if not job or job["state"] != "succeeded":
        summary["retrain"] = f"did not finish: {job and (job.get('error') or job['state'])}"
        print(f"    retrain {summary['retrain']}")
        return device
    result = job["result"]
    gate = result["gate"]
    print(f"    gate: {gate['reason']}; hard samples in the holdout: {gate['hard_samples']}")
    if result.get("rejected"):
        summary["retrain"] = f"candidate rejected by the gate ({gate['reason']}); the fleet keeps {ref}"
        return device
    after = night_map(http, result["model"], work, plan.holdout)
    summary["night_after"] = (result["model"], after)
    summary["rollout"] = result.get("rollout")
    say(
        f"one flywheel turn on the night domain: mAP50 {before['mAP50']:.3f} -> {after['mAP50']:.3f}, "
        f"mAP50-95 {before['mAP50_95']:.3f} -> {after['mAP50_95']:.3f} ({ref} -> {result['model']})"
    )
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


def print_summary(summary: dict[str, Any], url: str, user: str, password: str, work: Path, t_start: float) -> None:
    say(f"summary of run {summary['run']} ({time.monotonic() - t_start:.0f} s)")
    rows = [("model", summary.get("ref", "-"))]
    if summary.get("deploy_s") is not None:
        rows.append(("deploy -> active", f"{summary['deploy_s']:.1f} s (demo-cam)"))
    if "night_before" in summary:
        ref, m = summary["night_before"]
        rows.append(("night mAP50 before", f"{m['mAP50']:.3f} ({ref}, mAP50-95 {m['mAP50_95']:.3f})"))
    rows.append(("hard samples", str(summary.get("samples", "-"))))
    if "night_after" in summary:
        ref, m = summary["night_after"]
        rows.append(("night mAP50 after", f"{m['mAP50']:.3f} ({ref}, mAP50-95 {m['mAP50_95']:.3f})"))
        rows.append(("canary rollout", f"{summary.get('rollout')}: edgeloop rollout status {summary.get('rollout')}"))
    elif "retrain" in summary:
        rows.append(("retrain", summary["retrain"]))
    rows += [
        ("console", f"{url}/console  (user {user}, password {password})"),
        ("API", f"{url}/docs  (admin token in {work / 'server' / 'admin_token'})"),
        ("logs", f"{work / 'server.log'}, {work / 'agent.log'}"),
    ]
    for k, v in rows:
        print(f"    {k:<20} {v}")
    print("DEMO SUMMARY OK", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="after the summary, show live results this long (default: until Ctrl-C in a terminal, else none)",
    )
    ap.add_argument("--dir", type=Path, default=ROOT / ".demo", help="working folder (the server data is kept)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the server's HTTP port (default {DEFAULT_PORT})")
    ap.add_argument("--fresh", action="store_true", help="start over: forget the trained model and the devices")
    ap.add_argument("--quick", action="store_true", help="a small, fast turn: fewer scenes, epochs and samples")
    ap.add_argument(
        "--no-flywheel", dest="flywheel", action="store_false", help="skip the night camera and the retrain turn"
    )
    args = ap.parse_args()
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    seconds = args.seconds if args.seconds is not None else (None if tty else 0.0)
    plan = QUICK if args.quick else FULL
    t_start = time.monotonic()

    work: Path = args.dir
    if args.fresh or not (work / "server" / "edgeloop.db").exists():
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(work / "agent", ignore_errors=True)
    shutil.rmtree(work / "agent-night", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: fails only if one listens
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError:
            raise SystemExit(
                f"port {args.port} is taken (another demo still running?): stop it, or pass --port N"
            ) from None
    state_path = work / "runs.json"
    run = (json.loads(state_path.read_text())["runs"] if state_path.exists() else 0) + 1
    state_path.write_text(json.dumps({"runs": run}))
    summary: dict[str, Any] = {"run": run}
    say(f"run {run}, working in {work}")
    video, truth = write_scene_video(work / "camera.avi", seconds=12.0)
    print(f"    camera {video.name}: synthetic scenes of circles, squares and triangles, a new scene every second")

    port = args.port
    server_log = open(work / "server.log", "a")
    server = subprocess.Popen(
        [str(BIN / "edgeloop"), "server", "--data-dir", str(work / "server"), "--port", str(port), "--mqtt-port", "0"],
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "EDGELOOP_COMPILE_MEASURE_S": str(plan.measure_s)},
    )
    procs = [server]
    agent_log = open(work / "agent.log", "w")
    url = f"http://127.0.0.1:{port}"
    user = password = "-"
    finished = False
    try:
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
        print(f"    admin token: in {work / 'server' / 'admin_token'}")

        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=15)
        user, password = console_login(http, work)
        print(f"    console:     {url}/console   (user {user}, password {password}; an admin)")
        forget_old_devices(env, http)
        ref = ensure_detector(env, http, plan)
        summary["ref"] = ref
        say(f"{ref}: every target measured on this machine")
        print(run_cli(env, "models", "show", ref))

        device = "demo-cam"
        say(f"starting the agent of {device}")
        agent = start_agent(env, http, work, device, video, "agent", agent_log)
        procs.append(agent)

        say(f"deploying {ref} to {device}")
        t0 = time.monotonic()
        run_cli(env, "deploy", ref, "--device", device, "--health-window", "3")
        summary["deploy_s"] = live(http, [device], plan.first_live_s, procs, work, t0)
        devices = [device]
        if args.flywheel:
            devices.append(flywheel_turn(env, http, work, ref, run, plan, procs, agent_log, summary))
        print_summary(summary, url, user, password, work, t_start)
        finished = True
        if seconds is None or seconds > 0:
            live(http, devices, seconds, procs, work, t0)
    except KeyboardInterrupt:
        print()
    finally:
        say("stopping")
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        server_log.close()
        agent_log.close()
        if finished and not tty:
            print("    no terminal here, so the stack stopped after the summary. Start it again with `make demo`")
            print(f"    (it reuses the trained model; console {url}/console, user {user}, password {password})")
        elif not finished:
            print(f"    logs: {work / 'server.log'}, {work / 'agent.log'}")
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
