"""A dead broker: agent and server keep running, say so in one log line, and converge again when it
returns (the restarted broker has lost its retained messages; the server re-publishes them)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import Proc, Server, start_agent, wait_for

pytestmark = pytest.mark.e2e


def _broker(workdir: Path, port: int) -> Proc:
    import shutil

    from tests.helpers import _port_open

    conf = workdir / f"mosquitto-{time.monotonic_ns()}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    p = Proc([shutil.which("mosquitto") or "mosquitto", "-c", str(conf)], workdir / "mosquitto.log")
    wait_for(lambda: _port_open(port), 10, "mosquitto up")
    return p


def test_broker_outage_is_survived(tmp_path: Path, assets: dict[str, Path]) -> None:
    from tests.helpers import free_port

    port = free_port()
    broker = _broker(tmp_path, port)
    fleet = Server(tmp_path / "server", f"mqtt://127.0.0.1:{port}")
    agent = None
    try:
        fleet.push(assets["model_v1"])
        fleet.push(assets["model_v2"])
        enrolled = fleet.enroll("cam-r")
        agent = start_agent(tmp_path, enrolled, str(assets["video"]))
        fleet.cli("deploy", "colors:1", "--device", "cam-r", "--health-window", "0.5")
        wait_for(lambda: fleet.device("cam-r")["state"] == "committed", 30, "colors:1 committed")

        broker.stop()
        wait_for(lambda: "MQTT disconnected" in agent.log(), 10, "agent notices the broker is gone")
        time.sleep(1.0)
        assert agent.alive() and fleet.proc.alive()
        # deployed while the broker is down: stored in the database, delivered when it is back
        fleet.cli("deploy", "colors:2", "--device", "cam-r", "--health-window", "0.5")
        broker = _broker(tmp_path, port)
        wait_for(
            lambda: (d := fleet.device("cam-r"))["state"] == "committed" and d["version"] == 2,
            60,
            "colors:2 committed after the broker returned",
        )
        last = fleet.device("cam-r")["last_seen"]
        wait_for(lambda: fleet.device("cam-r")["last_seen"] != last, 10, "telemetry flowing again")
    finally:
        if agent:
            agent.stop()
        fleet.stop()
        broker.stop()
