"""The fault suite: real agents, servers and brokers killed, frozen and cut off at the worst moments. What a
user depends on: a device never serves a model it has not verified, and always comes back to a resting
state that matches what it reports; nothing the server accepted is lost."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge_agent.update.download import sha256_file
from tests.helpers import Proc, Server, free_port, start_agent, wait_for

pytestmark = pytest.mark.e2e


def _ballasted(src: Path, dst: Path, seed: int, mb: int = 16) -> Path:
    """The colour classifier with an unused initializer of `mb` MB: the same answers, but download, verify
    and load take long enough to be killed in."""
    model = onnx.load(str(src))
    ballast = np.random.default_rng(seed).standard_normal(mb * 1024 * 1024 // 4).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(ballast, "ballast"))
    onnx.save(model, str(dst))
    return dst


def _kill_in(agent: Proc, update_json: Path, state: str, timeout: float = 60) -> str:
    """SIGKILL the agent while its persisted update state is `state`; returns the state it died in. The agent
    is stopped (SIGSTOP) first and the state read again, so the kill lands where it was aimed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen = json.loads(update_json.read_text())["state"]
        except (OSError, ValueError, KeyError):
            seen = None
        if seen == state:
            agent.p.send_signal(signal.SIGSTOP)
            now = json.loads(update_json.read_text())["state"]
            agent.p.send_signal(signal.SIGKILL)
            agent.stop(signal.SIGKILL)
            return str(now)
        time.sleep(0.0005)
    raise AssertionError(f"the agent never reached {state}:\n{agent.log()[-2000:]}")


def test_an_agent_killed_at_every_update_step_serves_only_verified_models_and_converges(
    tmp_path: Path, mosquitto: str, assets: dict[str, Path]
) -> None:
    server = Server(tmp_path / "server", mosquitto)
    agent: Proc | None = None
    try:
        for v in range(1, 6):
            server.push(_ballasted(assets["model_v1"], tmp_path / f"v{v}.onnx", seed=v))
        enrolled = server.enroll("cam-k")
        data = tmp_path / "agent-data"
        agent = start_agent(tmp_path, enrolled, str(assets["video"]))
        server.cli("deploy", "colors:1", "--device", "cam-k", "--health-window", "0.5")
        server.wait_serving("cam-k", 1, timeout=60)

        killed = []
        for version, state in ((2, "downloading"), (3, "verifying"), (4, "warming"), (5, "active")):
            body = {"model": "colors", "version": version, "health_window_s": 3.0 if state == "active" else 0.5}
            server.http.put("/api/v1/devices/cam-k/deployment", json=body).raise_for_status()  # no CLI start-up
            killed.append(_kill_in(agent, data / "update.json", state))
            agent = start_agent(tmp_path, enrolled, str(assets["video"]), log_name=f"agent-after-{state}")
            if state == "active":  # the candidate may be why it died: back to the last good model, and say so
                d = wait_for(lambda: (x := server.device("cam-k"))["state"] == "failed" and x, 60, "rolled back")
                assert d["version"] == 4 and "restarted during the health window" in d["reason"]
                server.wait_serving("cam-k", 4, timeout=30, state="failed")
            else:
                server.wait_serving("cam-k", version, timeout=60)
            assert f"resuming update interrupted in state {state}" in agent.log()
        assert killed == ["downloading", "verifying", "warming", "active"]

        # the committed artifact is damaged while the agent is down: it must not be served, and the device
        # installs its desired version again from the server (desired is colors:5, which it had rolled back)
        agent.stop(signal.SIGKILL)
        current = json.loads((data / "update.json").read_text())["current"]
        blob = bytearray(Path(current["path"]).read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        Path(current["path"]).write_bytes(bytes(blob))
        agent = start_agent(tmp_path, enrolled, str(assets["video"]), log_name="agent-after-damage")
        server.wait_serving("cam-k", 5, timeout=60)
        assert "no longer matches its sha256" in agent.log()
        served = json.loads((data / "update.json").read_text())["current"]
        assert served["version"] == 5 and sha256_file(Path(served["path"])) == served["sha256"]
        # no step left behind: no partial download, no candidate left unverified on disk
        assert not list((data / "models").rglob("*.part"))
        for job_dir in (data / "models" / "colors").iterdir():
            for f in job_dir.glob("*.onnx"):
                assert f.stat().st_size > 0
    finally:
        if agent is not None:
            agent.stop(signal.SIGKILL)
        server.stop()


class Partition:
    """A TCP relay between the agent and the broker that can drop every byte both ways while keeping the
    connections open: the silence of a cut cable or a dead cellular link, not a clean disconnect."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target = free_port(), target_port
        self.cut = threading.Event()
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self._srv.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self._socks += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.cut.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._srv.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


def test_a_partitioned_device_keeps_serving_is_seen_offline_and_catches_up_when_the_link_heals(
    tmp_path: Path, mosquitto: str, assets: dict[str, Path]
) -> None:
    """No network namespaces are needed: a relay that silently drops every byte is the partition."""
    server = Server(tmp_path / "server", mosquitto)
    link = Partition(int(mosquitto.rsplit(":", 1)[1]))
    agent: Proc | None = None
    try:
        server.push(assets["model_v1"])
        server.push(assets["model_v2"])
        enrolled = {**server.enroll("cam-p"), "mqtt_url": f"mqtt://127.0.0.1:{link.port}"}
        ep = free_port()
        agent = start_agent(
            tmp_path,
            enrolled,
            str(assets["video"]),
            config={"mqtt_keepalive_s": 2, "endpoints": {"enabled": True, "port": ep}},
        )
        server.cli("deploy", "colors:1", "--device", "cam-p", "--health-window", "0.5")
        server.wait_serving("cam-p", 1, timeout=60)

        link.cut.set()
        # the broker hears nothing for 1.5 keepalives and publishes the device's Last Will: offline
        wait_for(lambda: not server.device("cam-p")["online"], 20, "the server sees the device offline")
        server.cli("deploy", "colors:2", "--device", "cam-p", "--health-window", "0.5")  # while it is cut off
        time.sleep(1.0)
        assert agent.alive() and server.device("cam-p")["version"] == 1
        frames = _frames(ep)
        wait_for(lambda: _frames(ep) > frames, 10, "the camera loop keeps serving while partitioned")

        link.cut.clear()  # the agent's dead connection is noticed by its keepalive and replaced
        d = server.wait_serving("cam-p", 2, timeout=60)
        assert d["online"] and d["state"] == "committed"
    finally:
        if agent is not None:
            agent.stop()
        link.close()
        server.stop()


def _frames(port: int) -> int:
    """Frames the agent has served, from its local /metrics (which needs no network beyond the box)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("edgeloop_frames_total ")))


def test_a_server_killed_during_a_rollout_wave_finishes_it_after_restart_deploying_each_device_once(
    tmp_path: Path, mosquitto: str, assets: dict[str, Path]
) -> None:
    from sqlmodel import Session, func, select

    from fleet_server.audit import AuditLog
    from fleet_server.db import make_engine
    from fleet_server.devices.tables import Deployment
    from tools.fleet_sim import FleetSim

    env = {"EDGELOOP_ROLLOUT_TICK_S": "0.1"}
    data = tmp_path / "server"
    server = Server(data, mosquitto, env=env)
    sim = None
    try:
        server.push(assets["model_v1"])
        server.push(assets["model_v2"])
        sim = FleetSim(server.url, server.token, mosquitto, 8, "kill", telemetry_interval_s=0.2)
        sim.enroll({"site": "yard"})
        sim.start()
        for d in sim.devices:
            server.http.put(
                f"/api/v1/devices/{d}/deployment", json={"model": "colors", "version": 1}
            ).raise_for_status()
        wait_for(lambda: all(v == 1 for v in sim.versions().values()), 20, "fleet on v1")
        body = {"model": "colors", "version": 2, "selector": "site=yard", "canary": "2", "waves": ["50%", "100%"],
                "bake_s": 1.5, "gates": []}  # fmt: skip
        rid = server.http.post("/api/v1/rollouts", json=body).json()["id"]
        # killed while wave 1 is out: its devices are installing or baking
        wait_for(lambda: server.http.get(f"/api/v1/rollouts/{rid}").json()["wave"] >= 1, 60, "wave 1 started")
        server.proc.stop(signal.SIGKILL)
        time.sleep(1.0)
        server = Server(data, mosquitto, env=env, port=server.port)
        done = wait_for(
            lambda: (x := server.http.get(f"/api/v1/rollouts/{rid}").json())["state"] == "completed" and x,
            120,
            "the rollout completed by the restarted server",
        )
        assert all(d["state"] == "active" for d in done["devices"])
        assert all(x.installs == [1, 2] for x in sim.devices.values()), {d: x.installs for d, x in sim.devices.items()}
        with Session(make_engine(f"sqlite:///{data / 'edgeloop.db'}")) as s:
            starts = s.exec(
                select(AuditLog.id).where(AuditLog.action == "wave_started", AuditLog.target == f"rollout/{rid}")
            ).all()
            per_device = s.exec(
                select(Deployment.device_id, func.count()).where(Deployment.revision > 1).group_by(Deployment.device_id)
            ).all()
        assert len(starts) == 3  # canary, 50 %, 100 %: each started once, across the kill
        assert len(per_device) == 8 and all(n == 1 for _, n in per_device)
    finally:
        if sim:
            sim.stop()
        server.stop()


def test_a_frozen_broker_is_reported_and_nothing_a_device_said_is_lost_when_it_thaws(
    tmp_path: Path, assets: dict[str, Path]
) -> None:
    """SIGSTOP on Mosquitto: connections stay open and silent. The server's health says so within its
    keepalive, and every state message a device sent meanwhile is stored once the broker thaws."""
    from tests.helpers import start_mosquitto

    broker, port = start_mosquitto(tmp_path / "broker")
    url = f"mqtt://127.0.0.1:{port}"
    server = Server(tmp_path / "server", url, env={"EDGELOOP_MQTT_KEEPALIVE_S": "2"})
    agent: Proc | None = None
    try:
        server.push(assets["model_v1"])
        enrolled = server.enroll("cam-f")
        agent = start_agent(tmp_path, enrolled, str(assets["video"]), config={"mqtt_keepalive_s": 2})
        server.cli("deploy", "colors:1", "--device", "cam-f", "--health-window", "0.5")
        server.wait_serving("cam-f", 1, timeout=60)
        broker.p.send_signal(signal.SIGSTOP)
        try:
            wait_for(
                lambda: httpx.get(server.url + "/healthz", timeout=2).status_code == 503,
                20,
                "/healthz 503 while frozen",
            )
            # a deploy while the broker is frozen: stored, published once it thaws
            server.http.put("/api/v1/devices/cam-f/deployment", json={"model": "colors", "version": 1,
                            "health_window_s": 0.5}).raise_for_status()  # fmt: skip
        finally:
            broker.p.send_signal(signal.SIGCONT)
        wait_for(lambda: httpx.get(server.url + "/healthz", timeout=2).status_code == 200, 30, "/healthz ok again")
        revision = server.device("cam-f")["desired_revision"]
        wait_for(lambda: server.device("cam-f")["reported_revision"] == revision, 60, "the new revision reported")
        assert server.device("cam-f")["state"] == "committed" and agent.alive()
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        broker.stop()
