"""One bad device, one bad request or one bad day must not hurt the fleet (the hardening issue's F-n).

Each test attacks a real server, its real Mosquitto and real MQTT clients the way a hostile device or an
outage would, and checks what a fleet operator relies on: ingestion keeps going for every other device,
the server's own broker account cannot be taken, a device cannot knock another off, the login throttle
holds under parallel guessing, numbers out of range are refused rather than crashing, and /healthz tells
the truth.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from edge_agent.protocol.messages import MessageError, StatusMessage, decode_message
from edge_agent.update.download import download, same_origin
from fleet_server.bridge import MqttBridge
from fleet_server.db import make_engine, migrate
from tests.helpers import Server, _port_open, start_mosquitto, wait_for
from tools.fleet_sim import FleetSim

pytestmark = pytest.mark.e2e


class Client:
    """A device (or an impostor) on the server's managed Mosquitto."""

    def __init__(self, url: str, user: str, password: str, client_id: str) -> None:
        host, port = url.split("://")[1].split(":")
        self.connected = threading.Event()
        self.disconnects = 0
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.username_pw_set(user, password)
        self.c.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and self.connected.set()
        self.c.on_disconnect = self._gone
        self.c.reconnect_delay_set(30, 60)  # a kicked client stays kicked for the length of the test
        self.c.connect(host, int(port), keepalive=30)
        self.c.loop_start()
        if not self.connected.wait(5):
            self.c.loop_stop()
            raise AssertionError(f"{user} could not connect")

    def _gone(self, c, u, flags, rc, p) -> None:  # type: ignore[no-untyped-def]
        self.disconnects += 1

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _status(device_id: str) -> str:
    return json.dumps({"schema": 1, "device_id": device_id, "status": "online"})


@pytest.fixture()
def managed(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "server", None, extra=["--mqtt-broker", "mosquitto"])
    yield s
    s.stop()


def test_deep_nesting_is_refused_in_one_line() -> None:
    """F-1 at its root: the decoder turns hostile nesting into a MessageError, never a RecursionError."""
    for payload in (b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe"):
        with pytest.raises(MessageError):
            decode_message(payload, StatusMessage)


def test_a_hostile_device_cannot_stop_ingestion_or_take_the_server_account(managed: Server) -> None:
    """F-1, F-3, F-4, F-13 through the managed Mosquitto."""
    a, b = managed.enroll("dev-a"), managed.enroll("dev-b")
    url = a["mqtt_url"]
    # F-3: the server's own broker account cannot be enrolled away (nor anything in its namespace)
    for reserved in ("edgeloop-server", "EDGELOOP-server", "edgeloop-anything"):
        r = managed.http.post("/api/v1/devices", json={"device_id": reserved})
        assert r.status_code == 422 and "reserved" in r.json()["detail"]
    dev_b = Client(url, "dev-b", b["token"], "edgeloop-agent-dev-b")
    hostile = Client(url, "dev-a", a["token"], "edgeloop-agent-dev-a")
    try:
        # F-1: 100,000 nested brackets on the device's own topic
        hostile.publish("edgeloop/v1/devices/dev-a/telemetry", b"[" * 100_000)
        hostile.publish("edgeloop/v1/devices/dev-a/status", b"{" * 100_000)
        dev_b.publish("edgeloop/v1/devices/dev-b/status", _status("dev-b"))
        wait_for(lambda: managed.device("dev-b")["online"], 10, "dev-b's status stored after the attack")
        health = httpx.get(managed.url + "/healthz").json()
        assert health["ok"] and health["bridge"]["worker_alive"] and health["bridge"]["rejected"] >= 2
        # F-4: dev-a naming dev-b's client id does not knock dev-b off the broker
        impostor = Client(url, "dev-a", a["token"], "edgeloop-agent-dev-b")
        try:
            dev_b.publish("edgeloop/v1/devices/dev-b/status", _status("dev-b"))
            assert dev_b.disconnects == 0 and dev_b.c.is_connected()
        finally:
            impostor.close()
    finally:
        hostile.close()
        dev_b.close()
    assert a["token"] not in managed.proc.log() and b["token"] not in managed.proc.log()


def test_healthz_says_when_device_traffic_cannot_flow(tmp_path: Path) -> None:
    """F-13: the broker gone → 503 with the reason; back → 200. A bridge whose worker is not running is not ok."""
    broker, port = start_mosquitto(tmp_path)
    server = Server(tmp_path / "server", f"mqtt://127.0.0.1:{port}")
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200
        broker.stop()
        r = wait_for(lambda: (r := httpx.get(server.url + "/healthz")).status_code == 503 and r, 15, "503")
        assert r.json()["ok"] is False and r.json()["mqtt_connected"] is False
        conf = tmp_path / "mosquitto.conf"
        broker = type(broker)(["mosquitto", "-c", str(conf)], tmp_path / "mosquitto2.log")
        wait_for(lambda: httpx.get(server.url + "/healthz").status_code == 200, 30, "healthy again")
    finally:
        server.stop()
        broker.stop()
    engine = make_engine(f"sqlite:///{tmp_path / 'h.db'}")
    migrate(engine)
    idle = MqttBridge(engine, f"mqtt://127.0.0.1:{port}", shared=False)
    assert idle.health()["ok"] is False and idle.health()["worker_alive"] is False


def test_out_of_range_numbers_are_refused_not_crashed_on(managed: Server, assets: dict[str, Path]) -> None:
    """F-9 and F-11: 422 with a reason, never a 500 or a silently widened query."""
    managed.enroll("cam-1")
    huge = str(2**63)
    for path, params in (
        ("/api/v1/devices", {"limit": -5}),
        ("/api/v1/devices", {"offset": -1}),
        (f"/api/v1/samples/{huge}", {}),
        (f"/api/v1/jobs/{huge}", {}),
        (f"/api/v1/rollouts/{huge}", {}),
        (f"/api/v1/models/colors/versions/{huge}", {}),
        ("/api/v1/audit", {"before_id": huge}),
        ("/api/v1/samples", {"offset": huge}),
    ):
        r = managed.http.get(path, params=params)
        assert r.status_code == 422, (path, params, r.status_code, r.text[:200])
    r = managed.http.put("/api/v1/devices/cam-1/deployment", json={"model": "colors", "version": 2**63})
    assert r.status_code == 422
    for bad in ({"std": "0,1,1"}, {"mean": "nan,0,0"}, {"std": "inf,1,1"}):
        r = managed.http.post(
            "/api/v1/models/colors/versions",
            params={"task": "classify", "classes": "red,green,blue", **bad},
            content=assets["model_v1"].read_bytes(),
        )
        assert r.status_code == 422 and ("std" in r.text or "mean" in r.text), r.text
    assert managed.http.get("/api/v1/models").json() == []


def test_parallel_guesses_hit_the_login_throttle(managed: Server) -> None:
    """F-5: thirty parallel attempts for one user; at most five reach the password check."""
    r = managed.http.post("/api/v1/users", json={"name": "ops", "role": "viewer", "password": "Correct-Horse-9"})
    assert r.status_code == 201, r.text
    guesses = ["Wrong-Guess-1"] * 29 + ["Correct-Horse-9"]

    def login(pw: str) -> int:
        return httpx.post(managed.url + "/api/v1/auth/login", json={"name": "ops", "password": pw}).status_code

    with ThreadPoolExecutor(30) as pool:
        codes = list(pool.map(login, guesses))
    assert codes.count(429) >= 25 and codes.count(200) <= 1, codes


def test_the_device_token_goes_only_to_its_own_server(tmp_path: Path) -> None:
    """F-12: a signed manifest may name another host; that host never sees the device's credential."""
    seen: list[str | None] = []
    body = b"x" * 100

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    here = f"http://127.0.0.1:{srv.server_port}"
    try:
        download(f"{here}/a", tmp_path / "a", 100, "e", token="secret", token_origin="http://127.0.0.1:9")
        download(f"{here}/b", tmp_path / "b", 100, "e", token="secret", token_origin=here + "/")
    finally:
        srv.shutdown()
    assert seen == [None, "Bearer secret"]
    assert same_origin("http://h:80/x", "http://H/") and not same_origin("https://h/", "http://h/")


def test_a_canary_is_drawn_from_online_devices_and_an_unjudged_wave_does_not_pass(
    tmp_path: Path, mosquitto: str, assets: dict[str, Path]
) -> None:
    """F-15: one device online of five; the canary is that one, and a wave of offline devices aborts."""
    fleet = Server(tmp_path / "server", mosquitto, env={"EDGELOOP_ROLLOUT_TICK_S": "0.2"})
    sim = FleetSim(fleet.url, fleet.token, mosquitto, 5, "f15", telemetry_interval_s=0.2)
    try:
        fleet.push(assets["model_v1"])
        sim.enroll({"site": "f15"})
        sim.start()
        ids = sorted(sim.devices)
        for d in ids[1:]:
            sim.set_online(d, False)
        wait_for(lambda: sum(fleet.device(d)["online"] for d in ids) == 1, 15, "one device online")
        r = fleet.http.post(
            "/api/v1/rollouts",
            json={
                "model": "colors",
                "version": 1,
                "selector": "site=f15",
                "canary": "1",
                "waves": ["100%"],
                "bake_s": 0.2,
                "gates": [],
                "offline_timeout_s": 2.0,
            },
        )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        done = wait_for(
            lambda: (x := fleet.http.get(f"/api/v1/rollouts/{rid}").json())["state"] in ("aborted", "completed") and x,
            60,
            "the rollout to finish",
        )
        canary = [d for d in done["devices"] if d["wave"] == 0]
        assert [d["id"] for d in canary] == [ids[0]]
        assert done["state"] == "aborted" and "no device was judged" in done["reason"]
        passed = [a for a in done["audit"] if a["action"] == "wave_passed"]
        assert passed and passed[0]["detail"].startswith("canary: 1/1 ok")
    finally:
        sim.stop()
        fleet.stop()


def _alive(pid: int) -> bool:
    try:
        return "mosquitto" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False


def test_a_killed_server_leaves_no_broker_behind_and_replaces_a_stale_one(tmp_path: Path) -> None:
    """F-2: after `kill -9` of the server its Mosquitto goes too; a stale one found at start (left where the
    kernel could not take it along) is replaced, so a rotated token is refused at once."""
    data = tmp_path / "server"
    first = Server(data, None, extra=["--mqtt-broker", "mosquitto"])
    try:
        enrolled = first.enroll("cam-1")
        pid = int((data / "broker" / "mosquitto.pid").read_text())
        assert _alive(pid)
        first.proc.stop(signal.SIGKILL)
        wait_for(lambda: not _alive(pid), 10, "the managed mosquitto to die with its server")
    finally:
        first.stop()

    # a stale broker with the old accounts, as a server on another OS would leave it
    conf = data / "broker" / "mosquitto.conf"
    stale = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL, start_new_session=True)
    (data / "broker" / "mosquitto.pid").write_text(str(stale.pid))
    old_port = int(conf.read_text().split()[1])
    wait_for(lambda: _port_open(old_port), 10, "the stale broker listening")
    second = Server(data, None, extra=["--mqtt-broker", "mosquitto"])
    try:
        assert stale.wait(10) is not None  # replaced
        new = json.loads(second.cli("devices", "rotate-token", "cam-1", "--json").stdout)
        url = new["mqtt_url"]
        with pytest.raises(AssertionError):
            Client(url, "cam-1", enrolled["token"], "edgeloop-agent-cam-1")
        ok = Client(url, "cam-1", new["token"], "edgeloop-agent-cam-1")
        ok.close()
    finally:
        second.stop()
        if stale.poll() is None:
            stale.kill()
