"""The brokers the server runs itself. With Mosquitto, each device reaches only its own topics; without
it, the embedded broker still carries the whole loop. If these fail, one device can read or spoof
another's state, or a newcomer without Mosquitto gets no fleet."""

from __future__ import annotations

import getpass
import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from tests.helpers import Proc, Server, free_port, start_agent, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


def _connect(url: str, user: str, password: str) -> tuple[mqtt.Client, dict]:
    host, port = url.split("://")[1].split(":")
    got: dict = {"connect": None, "suback": [], "messages": []}
    ev = threading.Event()
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{user}")
    c.username_pw_set(user, password)

    def on_connect(c, u, f, rc, p):  # type: ignore[no-untyped-def]
        got["connect"] = rc
        ev.set()

    c.on_connect = on_connect
    c.on_subscribe = lambda c, u, mid, rcs, p: got["suback"].extend(rcs)
    c.on_message = lambda c, u, m: got["messages"].append(m.topic)
    c.connect(host, int(port))
    c.loop_start()
    ev.wait(5)
    return c, got


def _admitted(url: str, user: str, password: str) -> bool | None:
    """True/False: the broker took/refused the credential; None: no answer yet. The probe is closed after."""
    c, got = _connect(url, user, password)
    c.loop_stop()
    c.disconnect()
    return None if got["connect"] is None else not got["connect"].is_failure


def _deploy_and_wait(fleet: Server, assets: dict[str, Path], tmp_path: Path, device: str) -> dict:
    fleet.push(assets["model_v1"])
    enrolled = fleet.enroll(device)
    agent = start_agent(tmp_path, enrolled, str(assets["video"]), name=device)
    try:
        wait_for(lambda: fleet.device(device)["online"], 20, f"{device} online")
        fleet.cli("deploy", "colors:1", "--device", device, "--health-window", "0.5")
        fleet.wait_serving(device, 1, timeout=30)
    finally:
        agent.stop()
    return enrolled


def test_managed_mosquitto_keeps_devices_to_their_own_topics(tmp_path: Path, assets: dict[str, Path]) -> None:
    fleet = Server(tmp_path / "server", None, extra=["--mqtt-broker", "mosquitto"])
    try:
        a = _deploy_and_wait(fleet, assets, tmp_path, "cam-a")  # the agent authenticates with its credential
        b = fleet.enroll("cam-b")
        url = a["mqtt_url"]

        bad, got = _connect(url, "cam-b", "not-the-token")
        assert got["connect"] is not None and got["connect"].is_failure
        bad.loop_stop()

        fleet.cli("deploy", "colors:1", "--device", "cam-b")  # a retained desired state of its own
        c, got = _connect(url, "cam-b", b["token"])
        assert got["connect"] is not None and not got["connect"].is_failure
        c.subscribe(
            [("edgeloop/v1/devices/cam-a/desired", 1), ("edgeloop/#", 1), ("edgeloop/v1/devices/cam-b/desired", 1)]
        )
        # positive control: its own retained desired state arrives; cam-a's (also retained) never does
        wait_for(lambda: "edgeloop/v1/devices/cam-b/desired" in got["messages"], 10, "cam-b's own desired")

        spoof = {
            "schema": 1,
            "device_id": "cam-a",
            "revision": 99,
            "slots": {"default": {"state": "failed", "reason": "spoofed"}},
        }
        c.publish("edgeloop/v1/devices/cam-a/reported", json.dumps(spoof), qos=1).wait_for_publish(5)
        c.publish(
            "edgeloop/v1/devices/cam-b/reported", json.dumps({**spoof, "device_id": "cam-b"}), qos=1
        ).wait_for_publish(5)
        # cam-b's own report arrives (so the spoof had time to arrive too) ...
        wait_for(lambda: fleet.device("cam-b")["reason"] == "spoofed", 10, "cam-b's own report stored")
        # ... but cam-a's state was not touched, and cam-b never saw cam-a's desired state
        assert fleet.device("cam-a")["reason"] != "spoofed"
        assert "edgeloop/v1/devices/cam-a/desired" not in got["messages"]
        c.loop_stop()
        assert "token" not in (fleet.data_dir / "broker" / "passwd").read_text()
        assert b["token"] not in fleet.proc.log()

        # a rotated token replaces the old one at the broker; a revoked device cannot connect at all
        new = json.loads(fleet.cli("devices", "rotate-token", "cam-b", "--json").stdout)
        old, got = _connect(url, "cam-b", b["token"])
        assert got["connect"] is not None and got["connect"].is_failure
        old.loop_stop()
        ok, got = _connect(url, "cam-b", new["token"])
        assert got["connect"] is not None and not got["connect"].is_failure
        ok.loop_stop()
        ok.disconnect()
        fleet.cli("devices", "revoke", "cam-b")
        gone, got = _connect(url, "cam-b", new["token"])
        assert got["connect"] is not None and got["connect"].is_failure
        gone.loop_stop()

        # delete forgets a device with a deployment and telemetry: its credential, and its retained desired state
        assert "deleted cam-a" in fleet.cli("devices", "delete", "cam-a").stdout
        assert fleet.http.get("/api/v1/devices/cam-a").status_code == 404
        old_a, got = _connect(url, "cam-a", a["token"])
        assert got["connect"] is not None and got["connect"].is_failure
        old_a.loop_stop()
        again = fleet.enroll("cam-a")  # the id is free again, with nothing of the old device's
        fresh, got = _connect(url, "cam-a", again["token"])
        fresh.subscribe("edgeloop/v1/devices/cam-a/desired", 1)
        time.sleep(1.0)
        assert "edgeloop/v1/devices/cam-a/desired" not in got["messages"]
        fresh.loop_stop()
        fresh.disconnect()
        assert fleet.device("cam-a")["version"] is None
        actions = [e["action"] for e in fleet.http.get("/api/v1/audit").json()]
        assert "device.deleted" in actions
    finally:
        fleet.stop()


def test_embedded_broker_carries_the_loop(tmp_path: Path, assets: dict[str, Path]) -> None:
    fleet = Server(tmp_path / "server", None, extra=["--mqtt-broker", "embedded"])
    try:
        _deploy_and_wait(fleet, assets, tmp_path, "cam-e")
        assert "embedded MQTT broker" in fleet.proc.log()
    finally:
        fleet.stop()


def test_an_external_mosquitto_takes_its_accounts_from_the_server(tmp_path: Path, assets: dict[str, Path]) -> None:
    """deploy/mosquitto as compose and Kubernetes run it: the server writes passwd and acl into a shared
    folder, run-mosquitto.sh waits for them and reloads Mosquitto when they change."""
    auth, port = tmp_path / "auth", free_port()
    auth.mkdir()
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1").replace("/mosquitto/auth", str(auth))
    conf = conf.replace("/mosquitto/data/", f"{tmp_path}/data/").replace("log_dest stdout", "")
    conf = conf.replace("include_dir /mosquitto/conf.d", "")  # compose and Kubernetes add a TLS listener there
    conf += f"user {getpass.getuser()}\n"  # as root it would drop to `mosquitto`, outside this folder's group
    (tmp_path / "data").mkdir()
    (tmp_path / "mosquitto.conf").write_text(conf)
    broker = Proc(
        ["sh", str(ROOT / "deploy" / "mosquitto" / "run-mosquitto.sh"), str(tmp_path / "mosquitto.conf")],
        tmp_path / "mosquitto.log",
        env={"AUTH_DIR": str(auth), "RELOAD_INTERVAL": "0.2"},
    )
    url = f"mqtt://127.0.0.1:{port}"
    fleet = Server(
        tmp_path / "server", f"mqtt://edgeloop-server:s3rver-Pa55@127.0.0.1:{port}",
        env={"EDGELOOP_MQTT_AUTH_DIR": str(auth), "EDGELOOP_MQTT_PUBLIC_URL": url},
    )  # fmt: skip
    try:
        assert (
            oct((auth / "passwd").stat().st_mode & 0o777) == "0o640"
            and "s3rver-Pa55" not in (auth / "passwd").read_text()
        )
        a = _deploy_and_wait(fleet, assets, tmp_path, "ext-a")  # a real agent gets in with its credential
        b = fleet.enroll("ext-b")
        wait_for(lambda: _admitted(url, "ext-b", b["token"]), 10, "ext-b admitted")
        c, got = _connect(url, "ext-b", b["token"])
        c.subscribe([("edgeloop/v1/devices/ext-a/desired", 1), ("edgeloop/v1/devices/ext-b/desired", 1)])
        fleet.cli("deploy", "colors:1", "--device", "ext-b")
        wait_for(lambda: "edgeloop/v1/devices/ext-b/desired" in got["messages"], 10, "ext-b's own desired state")
        assert "edgeloop/v1/devices/ext-a/desired" not in got["messages"]  # never another device's
        c.loop_stop()
        c.disconnect()
        fleet.cli("devices", "revoke", "ext-a")
        wait_for(lambda: _admitted(url, "ext-a", a["token"]) is False, 10, "revoked ext-a refused")
    finally:
        fleet.stop()
        broker.stop()


def test_a_batch_enrolment_admits_every_device_at_once_or_none(tmp_path: Path) -> None:
    """`edgeloop devices enroll ID ID ... --out-dir` on the Mosquitto the server runs: one request, one
    broker update; each device connects with its own token; a batch naming an enrolled or invalid id
    creates nothing."""
    fleet = Server(tmp_path / "server", None, extra=["--mqtt-broker", "mosquitto"])
    try:
        ids = [f"yard-{i}" for i in range(3)]
        (tmp_path / "more.txt").write_text("# one per line\nyard-3\n")
        out = tmp_path / "creds"
        r = fleet.cli("devices", "enroll", *ids, "--from-file", str(tmp_path / "more.txt"), "--out-dir", str(out))
        assert "enrolled 4 device(s)" in r.stdout
        for device_id in [*ids, "yard-3"]:
            path = out / f"{device_id}.yaml"
            assert path.stat().st_mode & 0o777 == 0o600
            cfg = yaml.safe_load(path.read_text())
            assert cfg["device_id"] == device_id
            assert wait_for(lambda c=cfg: _admitted(c["mqtt_url"], c["device_id"], c["token"]), 10, "admitted")
        assert _admitted(cfg["mqtt_url"], "yard-0", cfg["token"]) is False  # yard-3's token is not yard-0's

        bad = fleet.cli("devices", "enroll", "yard-9", "yard-1", "--json", check=False)
        assert bad.returncode != 0 and "already enrolled (1): yard-1" in bad.stderr
        bad = fleet.cli("devices", "enroll", "yard-9", "edgeloop-x", "--json", check=False)
        assert bad.returncode != 0 and "reserved" in bad.stderr
        listed = {d["id"] for d in fleet.http.get("/api/v1/devices").json()}
        assert listed == {*ids, "yard-3"}  # neither refused batch created yard-9
    finally:
        fleet.stop()


def test_simulated_devices_each_connect_as_themselves_and_follow_a_rollout(
    tmp_path: Path, assets: dict[str, Path]
) -> None:
    """The fleet simulator with one MQTT connection per device (what bench_fleet's `--connections own` runs at
    scale): each device connects to the Mosquitto the server manages with its own id and token, reads only its
    own desired state, and a rollout reaches every one of them."""
    from tools.fleet_sim import FleetSim

    fleet = Server(
        tmp_path / "server", None, extra=["--mqtt-broker", "mosquitto"], env={"EDGELOOP_ROLLOUT_TICK_S": "0.2"}
    )
    sim = None
    try:
        fleet.push(assets["model_v1"])
        # the URL given is never used: each device takes the broker's address from its enrolment
        sim = FleetSim(fleet.url, fleet.token, "mqtt://127.0.0.1:1", 40, "own", telemetry_interval_s=0.5,
                       connections="own")  # fmt: skip
        sim.enroll()
        sim.start()
        wait_for(lambda: sim is not None and sim.connected() == 40, 30, "40 connections, one per device")
        assert sim.mux is not None and sim.mux.refused == 0
        devices = lambda: fleet.http.get("/api/v1/devices", params={"limit": 100}).json()  # noqa: E731
        wait_for(lambda: sum(d["online"] for d in devices()) == 40, 20, "every device online, each by itself")
        body = {"model": "colors", "version": 1, "selector": "all", "canary": "10%", "waves": ["100%"], "bake_s": 0}
        r = fleet.http.post("/api/v1/rollouts", json={**body, "gates": []})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        wait_for(lambda: fleet.http.get(f"/api/v1/rollouts/{rid}").json()["state"] == "completed", 60, "rollout")
        assert set(sim.versions().values()) == {1}
    finally:
        if sim is not None:
            sim.stop()
        fleet.stop()
