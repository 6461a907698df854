"""Fleet simulator: N protocol-level agents in one process, on one shared MQTT connection or one each.

Each simulated device is enrolled on the server, follows its desired state (verifying the manifest
signature like a real agent), reports the version it runs, and sends telemetry whose fps / latency /
confidence can be made worse for chosen versions. Failure injection: a version that fails to install,
a download failure rate, and devices that are offline until brought back.

With `hardware` (device -> hardware key) a device measures what it installs like a real agent: it downloads
the version's CPU targets, times each on this machine (edge_agent/update/measure.py), multiplies each
figure by the slowdown declared for its key and target (`slowdown`), chooses by the agent's own rules and
reports the timings with its key. That is how three kinds of hardware are simulated on one CPU.

With `connections="shared"` (the default) one connection speaks for every device: it needs a broker that
allows that (a test or lab broker without per-device ACLs). With `connections="own"` each device connects
as itself, with its own client id, username and token from its enrolment and an "offline" Last Will, as an
agent does, so the broker's per-device ACLs apply; one thread drives all the connections (tools/mqtt_mux.py).
Used by tests and tools/bench_fleet.py.

    python tools/fleet_sim.py --devices 50 --server-url http://127.0.0.1:8080 --token ADMIN \\
        --mqtt-url mqtt://127.0.0.1:1883 --slow 2=1.4
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import queue
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.protocol.messages import (  # noqa: E402
    Capabilities,
    DesiredState,
    MeasuredTargets,
    MessageError,
    Prediction,
    ReportedState,
    ShadowTelemetry,
    SlotReport,
    StatusMessage,
    TargetTiming,
    Telemetry,
    UpdateStateName,
    decode_message,
    encode_message,
)
from edge_agent.protocol.signing import SignatureError, verify_signed_manifest  # noqa: E402
from edge_agent.protocol.topics import DeviceTopics, parse_device_topic  # noqa: E402
from edge_agent.update.checks import runnable_targets  # noqa: E402
from edge_agent.update.measure import Timing, choose, time_runs  # noqa: E402
from tools.mqtt_mux import MqttMux  # noqa: E402


@dataclass
class SimDevice:
    id: str
    online: bool = True
    model: str | None = None
    version: int | None = None
    state: str = "idle"
    target: int | None = None
    reason: str | None = None
    revision: int = 0
    frames: int = 0
    base_fps: float = 30.0
    base_p95: float = 8.0
    pending: DesiredState | None = None
    shadow_version: int | None = None
    shadow_frames: int = 0
    installs: list[int] = field(default_factory=list)
    hardware: str | None = None  # a hardware key: the device measures what it installs
    serving_target: str | None = None
    measured: MeasuredTargets | None = None
    manifest: object | None = None  # the verified manifest being installed
    prefer: tuple[str | None, str | None] = (None, None)
    boot: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    report_seq: int = 0
    token: str | None = None  # its own MQTT password (connections="own")
    client: Any = None  # its own MQTT connection (connections="own")


class FleetSim:
    def __init__(
        self,
        server_url: str,
        admin_token: str,
        mqtt_url: str,
        n: int,
        prefix: str = "sim",
        slow: dict[int, float] | None = None,
        fail_versions: set[int] | None = None,
        download_failure_rate: float = 0.0,
        offline: set[str] | None = None,
        telemetry_interval_s: float = 0.5,
        install_delay_s: float = 0.1,
        seed: int = 0,
        agreement: dict[int, float] | None = None,
        hardware: dict[str, str] | None = None,
        slowdown: dict[str, dict[str, float]] | None = None,
        measure_budget_s: float = 1.0,
        connections: str = "shared",
    ) -> None:
        if connections not in ("shared", "own"):
            raise ValueError(f"connections is shared or own, not {connections!r}")
        self.connections = connections
        self.mux: MqttMux | None = None
        self.server_url, self.mqtt_url = server_url.rstrip("/"), mqtt_url
        self.agreement = dict(agreement or {})  # shadow agreement a candidate version scores (default 1.0)
        self.http = httpx.Client(
            base_url=self.server_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
        )
        self.rng = random.Random(seed)
        self.devices = {
            f"{prefix}-{i:05d}": SimDevice(
                f"{prefix}-{i:05d}", base_fps=30.0 + self.rng.uniform(-1, 1), base_p95=8.0 + self.rng.uniform(-0.5, 0.5)
            )
            for i in range(n)
        }
        for d in offline or set():
            self.devices[d].online = False
        for dev_id, key in (hardware or {}).items():
            self.devices[dev_id].hardware = key
        self.slowdown = {k: dict(v) for k, v in (slowdown or {}).items()}  # hardware key -> target -> factor
        self.measure_budget_s = measure_budget_s
        self._artifacts: dict[str, Path] = {}
        self._work = Path(__import__("tempfile").mkdtemp(prefix="fleet-sim-"))
        self.slow = dict(slow or {})
        self.fail_versions = set(fail_versions or set())
        self.download_failure_rate = download_failure_rate
        self.telemetry_interval_s, self.install_delay_s = telemetry_interval_s, install_delay_s
        self.root_public_key: str | None = None
        self._q: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        host, port = mqtt_url.split("://")[1].rsplit(":", 1)
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"fleet-sim-{prefix}-{seed}",
            clean_session=True,
        )
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self._q.put((m.topic, m.payload))
        self._host, self._port = host, int(port)
        self.rejected = 0
        self.telemetry_sent: dict[str, int] = {}
        self._device_mqtt_url: str | None = None  # the broker devices are told to use, from their enrolment

    # -- lifecycle ---------------------------------------------------------------------------
    def enroll(self, tags: dict[str, str] | None = None, tag_fn=None) -> None:  # type: ignore[no-untyped-def]
        ids = list(self.devices)
        fresh: set[str] = set()
        for i in range(0, len(ids), 1000):  # batch enrolment, all or nothing; one by one where some exist
            chunk = ids[i : i + 1000]
            r = self.http.post("/api/v1/devices/batch", json={"device_ids": chunk})
            if r.status_code == 409:
                continue
            r.raise_for_status()
            self.root_public_key = r.json()[0]["root_public_key"]
            for cred in r.json():
                self.devices[cred["device_id"]].token = cred["token"]
                self._device_mqtt_url = cred.get("mqtt_url") or self._device_mqtt_url
            fresh.update(chunk)
        for d in self.devices.values():
            if d.id not in fresh:
                r = self.http.post("/api/v1/devices", json={"device_id": d.id})
                if r.status_code == 409:
                    continue
                r.raise_for_status()
                self.root_public_key = r.json()["root_public_key"]
                d.token = r.json()["token"]
            t = dict(tags or {})
            if tag_fn is not None:
                t.update(tag_fn(d.id))
            if t:
                self.http.put(f"/api/v1/devices/{d.id}/tags", json={"tags": t}).raise_for_status()

    def start(self) -> FleetSim:
        if self.connections == "own":
            host, port = self._host, self._port
            if self._device_mqtt_url and self._device_mqtt_url.startswith("mqtt://"):
                host, _, p = self._device_mqtt_url.split("://", 1)[1].split("@")[-1].rpartition(":")
                port = int(p)
            self.mux = MqttMux(host, port, keepalive=60)
            for d in self.devices.values():
                if d.token is None:
                    raise RuntimeError(f"{d.id} has no token of its own: enrol the devices in this run first")
                offline = encode_message(StatusMessage(device_id=d.id, status="offline"))  # type: ignore[arg-type]
                d.client = self.mux.add(
                    f"edgeloop-agent-{d.id}",
                    d.id,
                    d.token,
                    on_connect=functools.partial(self._on_own_connect, d),
                    on_message=lambda topic, payload: self._q.put((topic, payload)),
                    will=(DeviceTopics(d.id).status, offline),
                )
            self.mux.start()
        else:
            self.client.connect(self._host, self._port, keepalive=30)
            self.client.loop_start()
        for name, fn in (("sim-desired", self._desired_worker), ("sim-telemetry", self._telemetry_loop)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for d in self.devices.values():
            if d.online:
                self._publish_status(d, "offline")
        time.sleep(0.2)
        if self.mux is not None:
            self.mux.stop()
        else:
            self.client.loop_stop()
            self.client.disconnect()
        for t in self._threads:
            t.join(2)
        self.http.close()

    def set_online(self, device_id: str, online: bool) -> None:
        d = self.devices[device_id]
        with self._lock:
            d.online = online
        self._publish_status(d, "online" if online else "offline")
        if online and d.pending is not None:
            self._q.put(("__pending__", device_id.encode()))

    # -- MQTT --------------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, rc, props) -> None:  # type: ignore[no-untyped-def]
        client.subscribe("edgeloop/v1/devices/+/desired", 1)
        for d in self.devices.values():
            if d.online:
                self._publish_status(d, "online")

    def _on_own_connect(self, d: SimDevice, client: Any) -> None:
        client.subscribe(DeviceTopics(d.id).desired, 1)  # its own topic: all the broker lets it read
        if d.online:
            self._publish_status(d, "online")

    def connected(self) -> int:
        """Devices connected as themselves (connections="own"), or 1 for the shared connection."""
        return self.mux.connected if self.mux is not None else int(self.client.is_connected())

    def _publish(self, d: SimDevice, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        client = d.client if d.client is not None else self.client
        client.publish(topic, payload, qos=qos, retain=retain)

    def _publish_status(self, d: SimDevice, status: str) -> None:
        msg = StatusMessage(device_id=d.id, status=status)  # type: ignore[arg-type]
        self._publish(d, DeviceTopics(d.id).status, encode_message(msg), qos=1, retain=True)

    def _report(self, d: SimDevice) -> None:
        d.report_seq += 1
        msg = ReportedState(
            device_id=d.id,
            revision=d.revision,
            boot=d.boot,
            seq=d.report_seq,
            slots={
                "default": SlotReport(
                    model=d.model,
                    version=d.version,
                    state=UpdateStateName(d.state),
                    target_version=d.target,
                    reason=d.reason,
                    shadow_model=d.model if d.shadow_version else None,
                    shadow_version=d.shadow_version,
                    target=d.serving_target,
                    measured=d.measured,
                )
            },
            capabilities=Capabilities(agent_version="sim", hardware_key=d.hardware) if d.hardware else None,
        )
        self._publish(d, DeviceTopics(d.id).reported, encode_message(msg), qos=1, retain=True)

    def _desired_worker(self) -> None:
        """Desired messages start installs; installs finish `install_delay_s` later, all in parallel."""
        due: list[tuple[float, int, str, int, str]] = []  # (time, seq, device, version, model)
        seq = 0
        while not self._stop.is_set():
            timeout = max(0.0, min(0.2, due[0][0] - time.monotonic())) if due else 0.2
            try:
                topic, payload = self._q.get(timeout=timeout)
            except queue.Empty:
                topic, payload = "", b""
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, dev_id, version, model = heapq.heappop(due)
                self._finish(self.devices[dev_id], version, model)
            if not topic:
                continue
            if topic == "__pending__":
                d = self.devices[payload.decode()]
                msg, d.pending = d.pending, None
            else:
                parsed = parse_device_topic(topic)
                if parsed is None or parsed[0] not in self.devices or not payload:
                    continue
                d = self.devices[parsed[0]]
                try:
                    msg = decode_message(payload, DesiredState, expect_device=d.id)
                except MessageError:
                    self.rejected += 1
                    continue
                if not d.online:
                    d.pending = msg  # applied when the device comes back
                    continue
            started = self._start_install(d, msg) if msg is not None else None
            if started is not None:
                seq += 1
                heapq.heappush(due, (now + self.install_delay_s, seq, d.id, started[0], started[1]))

    def _start_install(self, d: SimDevice, msg: DesiredState) -> tuple[int, str] | None:
        if msg.revision == d.revision or not msg.deployments:
            return None
        dep = msg.deployments[0]
        try:
            m = verify_signed_manifest(dep.manifest, self.root_public_key or "")
        except SignatureError as exc:
            d.revision, d.state, d.reason = msg.revision, "failed", f"signature: {exc}"
            self._report(d)
            return None
        shadow_version = None
        if dep.shadow is not None:
            try:
                shadow_version = verify_signed_manifest(dep.shadow.manifest, self.root_public_key or "").version
            except SignatureError:
                shadow_version = None
        d.revision, d.target, d.reason, d.manifest = msg.revision, m.version, None, m
        d.prefer = (dep.measure.prefer, dep.measure.prefer_from) if dep.measure else (None, None)
        if d.shadow_version != shadow_version:
            d.shadow_version, d.shadow_frames = shadow_version, 0
        d.state = "downloading"
        self._report(d)
        return m.version, m.model

    def _finish(self, d: SimDevice, version: int, model: str) -> None:
        if d.target != version:
            return  # superseded by a newer desired state meanwhile
        if version in self.fail_versions or self.rng.random() < self.download_failure_rate:
            d.state, d.reason = "failed", "download: simulated failure"
            self._report(d)
            return
        if d.hardware is not None and d.manifest is not None:
            self._measure(d)
        with self._lock:
            d.model, d.version, d.state = model, version, "committed"
            d.installs.append(version)
        self._report(d)

    def _artifact(self, url: str, sha256: str) -> Path:
        path = self._artifacts.get(sha256)
        if path is None:
            path = self._work / f"{sha256}.onnx"
            r = self.http.get(url)
            r.raise_for_status()
            path.write_bytes(r.content)
            self._artifacts[sha256] = path
        return path

    def _measure(self, d: SimDevice) -> None:
        """Time the version's CPU targets on this machine, scaled by the slowdown declared for this hardware."""
        import numpy as np
        import onnxruntime as ort

        m: Any = d.manifest
        targets = runnable_targets(m, "cpu")
        prefer, prefer_from = d.prefer
        if prefer in targets:
            why = f"measured best on this hardware with {prefer_from}; not timed again"
            d.serving_target = prefer
            d.measured = MeasuredTargets(model=m.model, version=m.version, hardware_key=d.hardware or "",
                                         chosen=prefer, reason=why)  # fmt: skip
            return
        timings: list[Timing] = []
        for t in targets:
            entry = m.artifacts[t]
            sess = ort.InferenceSession(
                str(self._artifact(entry.url, entry.sha256)), providers=["CPUExecutionProvider"]
            )
            x = np.zeros(m.input.shape, np.float32)
            name = sess.get_inputs()[0].name
            got = time_runs(functools.partial(sess.run, None, {name: x}), self.measure_budget_s, t)
            factor = self.slowdown.get(d.hardware or "", {}).get(t, 1.0)
            if got.p50_ms is not None and got.p99_ms is not None:
                got.p50_ms, got.p99_ms = round(got.p50_ms * factor, 4), round(got.p99_ms * factor, 4)
            timings.append(got)
        choice = choose(timings, {t: a.accuracy_delta for t, a in m.artifacts.items()}, fallback=targets[0])
        d.serving_target = choice.target
        d.measured = MeasuredTargets(
            model=m.model,
            version=m.version,
            hardware_key=d.hardware or "",
            timings=[TargetTiming(**t.to_json()) for t in timings],
            chosen=choice.target,
            reason=choice.reason,
        )

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.telemetry_interval_s):
            with self._lock:
                devs = [d for d in self.devices.values() if d.online and d.version is not None]
            for d in devs:
                factor = self.slow.get(int(d.version or 0), 1.0)
                d.frames += int(d.base_fps * self.telemetry_interval_s)
                msg = Telemetry(
                    device_id=d.id,
                    model=d.model,
                    version=d.version,
                    frames=d.frames,
                    fps=round(d.base_fps / factor + self.rng.uniform(-0.3, 0.3), 2),
                    latency_ms_p50=round(d.base_p95 * 0.6 * factor, 3),
                    latency_ms_p95=round(d.base_p95 * factor + self.rng.uniform(-0.2, 0.2), 3),
                    latency_ms_p99=round(d.base_p95 * 1.2 * factor, 3),
                    last_prediction=[Prediction(label="red", score=round(0.9 / factor, 3))],
                    shadow=self._shadow_telemetry(d),
                )
                self._publish(d, DeviceTopics(d.id).telemetry, encode_message(msg), qos=0)
                self.telemetry_sent[d.id] = self.telemetry_sent.get(d.id, 0) + 1

    def _shadow_telemetry(self, d: SimDevice) -> ShadowTelemetry | None:
        if d.shadow_version is None or d.model is None:
            return None
        d.shadow_frames += int(d.base_fps * self.telemetry_interval_s * 0.2)
        return ShadowTelemetry(
            model=d.model,
            version=d.shadow_version,
            frames=d.shadow_frames,
            agreement=self.agreement.get(d.shadow_version, 1.0),
        )

    # -- views -------------------------------------------------------------------------------
    def pause_telemetry(self) -> None:
        with self._lock:
            self.telemetry_interval_s = 3600.0

    def versions(self) -> dict[str, int | None]:
        with self._lock:
            return {d.id: d.version for d in self.devices.values()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--prefix", default="sim")
    ap.add_argument("--server-url", required=True)
    ap.add_argument("--token", required=True, help="admin token (to enroll and tag the devices)")
    ap.add_argument("--mqtt-url", required=True)
    ap.add_argument("--slow", action="append", default=[], help="VERSION=FACTOR: that version runs FACTOR x slower")
    ap.add_argument("--fail-version", type=int, action="append", default=[], help="that version fails to install")
    ap.add_argument("--offline-share", type=float, default=0.0, help="share of devices that stay offline")
    ap.add_argument("--tag", action="append", default=[], help="key=value tag for every simulated device")
    ap.add_argument("--seconds", type=float, default=0, help="run this long (default: until Ctrl-C)")
    ap.add_argument(
        "--connections",
        choices=["shared", "own"],
        default="shared",
        help="one MQTT connection for all devices, or one each with its own credentials (a broker with ACLs)",
    )
    args = ap.parse_args()
    slow = {int(k): float(v) for k, v in (s.split("=") for s in args.slow)}
    n_off = int(args.devices * args.offline_share)
    offline = {f"{args.prefix}-{i:05d}" for i in range(n_off)}
    sim = FleetSim(
        args.server_url,
        args.token,
        args.mqtt_url,
        args.devices,
        args.prefix,
        slow,
        set(args.fail_version),
        offline=offline,
        connections=args.connections,
    )
    sim.enroll(dict(t.split("=", 1) for t in args.tag))
    sim.start()
    print(f"{args.devices} simulated devices running ({n_off} offline); Ctrl-C to stop", flush=True)
    try:
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    print(json.dumps({"versions": sim.versions()})[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
