"""The production database path on a real PostgreSQL: migrations, the full deploy loop, and a server
restart that re-publishes desired state from the database. If this fails, a fleet on PostgreSQL
does not start, or devices lose their desired state when the server restarts."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.helpers import Server, start_agent, wait_for
from tests.pg import PostgresServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _retained_desired(mqtt_url: str, device: str, timeout: float = 5.0) -> dict | None:
    host, port = mqtt_url.split("://")[1].split(":")
    got: list[bytes] = []
    ev = threading.Event()
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)

    def on_message(c, u, m):  # type: ignore[no-untyped-def]
        if m.payload:
            got.append(m.payload)
            ev.set()

    c.on_message = on_message
    c.connect(host, int(port))
    c.subscribe(f"edgeloop/v1/devices/{device}/desired", 1)
    c.loop_start()
    ev.wait(timeout)
    c.loop_stop()
    c.disconnect()
    return json.loads(got[0]) if got else None


def _clear_retained(mqtt_url: str, device: str) -> None:
    host, port = mqtt_url.split("://")[1].split(":")
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    c.connect(host, int(port))
    c.loop_start()
    c.publish(f"edgeloop/v1/devices/{device}/desired", b"", qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_full_loop_on_postgres_and_restart_republishes(
    postgres: PostgresServer, mosquitto: str, tmp_path: Path, assets: dict[str, Path]
) -> None:
    db = postgres.create_database(f"edgeloop_test_{uuid.uuid4().hex[:10]}")
    data = tmp_path / "server"
    fleet = Server(data, mosquitto, extra=["--database-url", db])
    try:
        fleet.push(assets["model_v1"])
        enrolled = fleet.enroll("pg-cam")
        fleet.cli("deploy", "colors:1", "--device", "pg-cam", "--health-window", "0.5")
        assert (_retained_desired(mosquitto, "pg-cam") or {}).get("revision") == 1
    finally:
        fleet.stop()
    # the broker forgets (a new broker, a wiped retained store): the restarted server restores it from PostgreSQL
    _clear_retained(mosquitto, "pg-cam")
    assert _retained_desired(mosquitto, "pg-cam", timeout=1.0) is None
    fleet = Server(data, mosquitto, extra=["--database-url", db], port=fleet.port)  # devices know this URL
    agent = None
    try:
        desired = wait_for(lambda: _retained_desired(mosquitto, "pg-cam", timeout=1.0), 15, "re-published desired")
        assert desired["revision"] == 1 and desired["deployments"][0]["slot"] == "default"
        agent = start_agent(tmp_path, enrolled, str(assets["video"]))
        fleet.wait_serving("pg-cam", 1, timeout=40)
        assert "postgresql" in fleet.proc.log()
    finally:
        if agent:
            agent.stop()
        fleet.stop()
