"""No device state message is lost on the way in: not under a telemetry flood that overloads the server, and
not when the server dies before storing what it had received. If these fail, a device that updated can be
counted as *not updated* by its rollout, or its `committed` report vanishes with a crashed replica."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.protocol.messages import (
    Prediction,
    ReportedState,
    SlotReport,
    StatusMessage,
    Telemetry,
    UpdateStateName,
    encode_message,
)
from edge_agent.protocol.topics import DeviceTopics
from tests.helpers import Server, deploy_all, start_mosquitto, wait_for
from tools.fleet_sim import FleetSim

pytestmark = pytest.mark.e2e


def _client(mqtt_url: str, name: str) -> mqtt.Client:
    host, port = mqtt_url.split("://")[1].rsplit(":", 1)
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
    c.max_queued_messages_set(0)
    c.connect(host, int(port))
    c.loop_start()
    return c


def _flood(mqtt_url: str, sim: FleetSim, stop: threading.Event, sent: list[int]) -> None:
    """Valid telemetry for every simulated device, as fast as one publisher can send it."""
    c = _client(mqtt_url, "telemetry-flood")
    try:
        while not stop.is_set():
            for d in list(sim.devices.values()):
                msg = Telemetry(
                    device_id=d.id,
                    model=d.model,
                    version=d.version,
                    frames=10,
                    fps=d.base_fps,
                    latency_ms_p95=d.base_p95,
                    last_prediction=[Prediction(label="red", score=0.9)],
                )
                c.publish(DeviceTopics(d.id).telemetry, encode_message(msg), qos=0)
                sent[0] += 1
            time.sleep(0.001)
    finally:
        c.loop_stop()
        c.disconnect()


def test_a_telemetry_flood_sheds_only_telemetry_and_every_committed_device_is_counted(
    tmp_path: Path, mosquitto: str, assets: dict[str, Path]
) -> None:
    # a bridge queue of 20 points: the flood overflows it many times over
    s = Server(tmp_path / "server", mosquitto, env={"EDGELOOP_ROLLOUT_TICK_S": "0.2", "EDGELOOP_BRIDGE_QUEUE": "20"})
    sim = FleetSim(s.url, s.token, mosquitto, 12, "flood", telemetry_interval_s=0.2)
    stop, sent = threading.Event(), [0]
    flood = threading.Thread(target=_flood, args=(mosquitto, sim, stop, sent), daemon=True)
    try:
        for m in ("model_v1", "model_v3"):
            s.push(assets[m])
        sim.enroll({"site": "flood"})
        sim.start()
        deploy_all(s, sim, 1)
        flood.start()
        wait_for(lambda: s.http.get("/healthz").json()["bridge"]["telemetry_shed"] > 1000, 30, "telemetry shed")
        r = s.http.post(
            "/api/v1/rollouts",
            json={
                "model": "colors",
                "version": 2,
                "selector": "site=flood",
                "canary": "3",
                "waves": ["100%"],
                "bake_s": 0.5,
                "gates": [],
                "offline_timeout_s": 30,
            },
        )
        assert r.status_code == 201, r.text
        done = wait_for(
            lambda: (
                (x := s.http.get(f"/api/v1/rollouts/{r.json()['id']}").json())["state"] in ("completed", "aborted")
                and x
            ),
            120,
            "rollout finished under the flood",
        )
        bridge = s.http.get("/healthz").json()["bridge"]
        stop.set()
        flood.join(5)
        states = {d["id"]: d["state"] for d in done["devices"]}
        assert done["state"] == "completed" and set(states.values()) == {"active"}, (done, bridge)
        assert all(sim.devices[d].installs == [1, 2] for d in sim.devices)
        assert all(s.device(d)["version"] == 2 and s.device(d)["state"] == "committed" for d in sim.devices)
        # the flood was real: far more points than the server could store, and only telemetry was shed
        assert bridge["telemetry_shed"] > 1000 and sent[0] > bridge["telemetry_shed"], bridge
        metrics = s.http.get("/metrics").text
        assert "edgeloop_bridge_telemetry_shed_total" in metrics
        shed = [s.device(d)["telemetry_shed"] for d in sim.devices]
        assert sum(shed) > 0 and all(n >= 0 for n in shed)
    finally:
        stop.set()
        sim.stop()
        s.stop()


def test_state_messages_received_but_not_stored_come_back_after_a_server_kill(
    tmp_path: Path, assets: dict[str, Path]
) -> None:
    """The database is held locked, so the server receives two reports it cannot store; it is killed with
    SIGKILL. On restart under the same client id, the broker delivers them again and they are applied, in
    order, once."""
    broker, port = start_mosquitto(tmp_path)
    url = f"mqtt://127.0.0.1:{port}"
    extra = ["--mqtt-client-id", "edgeloop-replica-a"]
    s = Server(tmp_path / "server", url, extra=extra)
    pub = None
    lock = None
    try:
        s.push(assets["model_v1"])
        s.enroll("crash-1")
        topics = DeviceTopics("crash-1")
        pub = _client(url, "crash-1-reporter")
        pub.publish(topics.status, encode_message(StatusMessage(device_id="crash-1", status="online")), qos=1)
        wait_for(lambda: s.device("crash-1")["online"], 10, "device online")

        lock = sqlite3.connect(tmp_path / "server" / "edgeloop.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # nothing the server writes can commit now
        for state in (UpdateStateName.downloading, UpdateStateName.committed):
            slot = SlotReport(model="colors", version=1, state=state)
            msg = ReportedState(device_id="crash-1", revision=1, slots={"default": slot})
            pub.publish(topics.reported, encode_message(msg), qos=1).wait_for_publish(5)
        wait_for(lambda: s.http.get("/healthz").json()["bridge"]["unacked_state"] == 2, 10, "2 reports received")
        os.kill(s.proc.p.pid, signal.SIGKILL)
        s.proc.p.wait(10)
        lock.rollback()
        lock.close()
        lock = None
        s.http.close()
        s = Server(tmp_path / "server", url, extra=extra, port=s.port)
        d = wait_for(lambda: (x := s.device("crash-1"))["state"] == "committed" and x, 20, "reports re-delivered")
        assert d["model"] == "colors" and d["version"] == 1 and d["reported_revision"] == 1
        health = s.http.get("/healthz").json()["bridge"]
        assert health["persistent_session"] and health["unacked_state"] == 0, health
        # both reports were taken: applied, or (in one batch) the older replaced by the newer and acknowledged
        assert health["applied"] + health["superseded"] >= 2, health
    finally:
        if lock is not None:
            lock.close()
        if pub is not None:
            pub.loop_stop()
            pub.disconnect()
        s.stop()
        broker.stop()


def test_a_report_delivered_late_does_not_undo_a_newer_one(tmp_path: Path, mosquitto: str) -> None:
    """Two reports of one agent process reach the server in the wrong order (the broker may deliver them
    so: it happened in a 5,000-device rollout). The agent numbers its reports; the older is not applied,
    whether it comes in the same batch or a later one."""
    s = Server(tmp_path / "server", mosquitto)
    pub = _client(mosquitto, "late-reporter")
    try:
        s.enroll("late-1")
        topics = DeviceTopics("late-1")

        def report(seq: int, state: UpdateStateName, boot: str = "b1") -> bytes:
            version = 1 if state == "committed" else None
            slot = SlotReport(model="colors", version=version, state=state, target_version=1)
            return encode_message(
                ReportedState(device_id="late-1", revision=1, boot=boot, seq=seq, slots={"default": slot})
            )

        pub.publish(topics.reported, report(2, UpdateStateName.committed), qos=1).wait_for_publish(5)
        wait_for(lambda: s.device("late-1")["state"] == "committed", 10, "committed applied")
        pub.publish(topics.reported, report(1, UpdateStateName.downloading), qos=1).wait_for_publish(5)
        wait_for(lambda: s.http.get("/healthz").json()["bridge"]["stale"] == 1, 10, "the late report counted")
        assert s.device("late-1")["state"] == "committed"
        # a new agent process numbers from 1 again: its reports apply
        pub.publish(topics.reported, report(1, UpdateStateName.downloading, boot="b2"), qos=1).wait_for_publish(5)
        wait_for(lambda: s.device("late-1")["state"] == "downloading", 10, "a restarted agent's report applied")
    finally:
        pub.loop_stop()
        pub.disconnect()
        s.stop()
