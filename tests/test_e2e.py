"""The whole loop on real parts: Mosquitto, `edgeloop server` over HTTP, an `edgeloop-agent` process
reading a generated video. If this fails, a user following the README gets no working fleet."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session, select

from edge_agent.protocol.messages import Deployment as DeploymentMsg
from edge_agent.protocol.messages import DesiredState, encode_message
from edge_agent.protocol.signing import ReleaseCert, SignedManifest, load_private_key, sign_manifest
from fleet_server.db import make_engine
from fleet_server.registry.tables import ModelVersion
from model_zoo.datasets.synthetic_video import colour_at
from tests.factories import Keys
from tests.helpers import Server, start_agent, wait_for

pytestmark = pytest.mark.e2e


class EventTap:
    """Subscribes like an integration would, to the device's detection events."""

    def __init__(self, url: str, device_id: str) -> None:
        host, port = url.split("://")[1].split(":")
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda c, u, m: self._add(m.payload)
        self.c.connect(host, int(port))
        self.c.subscribe(f"edgeloop/v1/devices/{device_id}/events", 1)
        self.c.loop_start()

    def _add(self, payload: bytes) -> None:
        with self._lock:
            self.events.append(json.loads(payload))

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _server_signed_manifest(fleet: Server, version: int) -> SignedManifest:
    with Session(make_engine(f"sqlite:///{fleet.data_dir / 'edgeloop.db'}")) as s:
        mv = s.exec(select(ModelVersion).where(ModelVersion.version == version)).one()
    return SignedManifest.model_validate_json(mv.signed_manifest)


@pytest.fixture()
def fleet(tmp_path: Path, mosquitto: str) -> Iterator[Server]:
    s = Server(tmp_path / "server", mosquitto)
    yield s
    s.stop()


def test_push_deploy_run_report_then_refuse_tampered_artifact(
    fleet: Server, assets: dict[str, Path], tmp_path: Path, mosquitto: str
) -> None:
    v1 = fleet.push(assets["model_v1"])
    v2 = fleet.push(assets["model_v2"])
    assert (v1["name"], v1["version"], v2["version"]) == ("colors", 1, 2)
    enrolled = fleet.enroll("cam-1")
    assert enrolled["device_id"] == "cam-1" and enrolled["token"]
    tap = EventTap(mosquitto, "cam-1")
    agent = start_agent(tmp_path, enrolled, str(assets["video"]))
    try:
        wait_for(lambda: fleet.device("cam-1")["online"], 20, "agent online")
        fleet.cli("deploy", "colors:1", "--device", "cam-1", "--health-window", "3")
        # during the health window the device reports the new version serving, state active
        dev = wait_for(
            lambda: (
                (d := fleet.device("cam-1"))["version"] == 1 and d["state"] == "active" and (d["fps"] or 0) > 0 and d
            ),
            30,
            "colors:1 active with fps > 0",
        )
        assert dev["model"] == "colors"
        wait_for(lambda: fleet.device("cam-1")["state"] == "committed", 15, "colors:1 committed")
        listed = json.loads(fleet.cli("devices", "list", "--json").stdout)
        row = next(r for r in listed if r["id"] == "cam-1")
        assert {"id", "online", "model", "version", "state", "fps"} <= set(row)
        assert row["last_prediction"][0]["label"] in ("red", "green", "blue")

        # the model really runs: events name the colour of the frame they were computed on
        wait_for(lambda: len(tap.events) >= 4, 20, "detection events as the scene colour changes")
        correct = [e["predictions"][0]["label"] == colour_at((e["frame"] - 1) % 180, 30, 1.0) for e in tap.events]
        assert sum(correct) >= 0.9 * len(correct), tap.events

        # tamper with v2's stored artifact: the agent must refuse it and keep serving v1
        sha = v2["artifacts"][0]["sha256"]
        stored = fleet.data_dir / "artifacts" / sha[:2] / sha
        blob = bytearray(stored.read_bytes())
        blob[-1] ^= 0xFF
        stored.write_bytes(bytes(blob))
        frames_before = json.loads(json.dumps(fleet.device("cam-1")))
        fleet.cli("deploy", "colors:2", "--device", "cam-1")
        dev = wait_for(lambda: (d := fleet.device("cam-1"))["state"] == "failed" and d, 30, "colors:2 refused")
        assert "sha256 mismatch" in dev["reason"]
        assert dev["version"] == 1 and dev["target_version"] == 2
        assert frames_before["version"] == 1
        wait_for(lambda: (fleet.device("cam-1")["fps"] or 0) > 0, 10, "still serving frames on v1")
        listed = fleet.cli("devices", "list").stdout
        assert "sha256 mismatch" in listed

        # malformed desired payloads: one log line each, the agent keeps running
        tap.publish("edgeloop/v1/devices/cam-1/desired", b"{not json")
        tap.publish("edgeloop/v1/devices/cam-1/desired", json.dumps({"schema": 99, "device_id": "cam-1"}).encode())
        wait_for(lambda: agent.log().count("ignored desired state") >= 2, 10, "agent logs the bad payloads")
        assert agent.alive()
        assert fleet.device("cam-1")["version"] == 1
        # the server too: garbage telemetry is logged and ignored, good telemetry still counts
        tap.publish("edgeloop/v1/devices/cam-1/telemetry", b"\x00\x01garbage")
        wait_for(lambda: "ignored telemetry from cam-1" in fleet.proc.log(), 10, "server logs the bad telemetry")
        wait_for(lambda: (fleet.device("cam-1")["fps"] or 0) > 0, 10, "telemetry still flowing")

        # forged, replayed and expired manifests injected straight into the broker are refused by the agent
        fleet.push(assets["model_v3"])
        fleet.cli("deploy", "colors:3", "--device", "cam-1", "--health-window", "0.5")
        wait_for(lambda: (d := fleet.device("cam-1"))["state"] == "committed" and d["version"] == 3, 30, "colors:3")
        keys = Keys()
        v1_signed = _server_signed_manifest(fleet, 1)
        release = load_private_key((fleet.data_dir / "keys" / "release.key").read_bytes())
        cert = ReleaseCert.model_validate_json((fleet.data_dir / "keys" / "release.cert.json").read_text())
        stale = v1_signed.unverified_manifest().model_copy(
            update={
                "version": 4,
                "created_at": datetime(2020, 1, 1, tzinfo=timezone.utc),
                "expires_at": datetime(2020, 2, 1, tzinfo=timezone.utc),
            }
        )
        cases = [
            (sign_manifest(v1_signed.unverified_manifest(), keys.release, keys.cert), "signature:"),
            (v1_signed, "version: colors:1 is older than trusted version 3"),
            (sign_manifest(stale, release, cert), "expired:"),
        ]
        for n, (envelope, reason) in enumerate(cases):
            msg = DesiredState(device_id="cam-1", revision=1000 + n, deployments=[DeploymentMsg(manifest=envelope)])
            tap.publish("edgeloop/v1/devices/cam-1/desired", encode_message(msg))
            dev = wait_for(
                lambda r=reason: (
                    (d := fleet.device("cam-1"))["state"] == "failed" and (d["reason"] or "").startswith(r) and d
                ),
                15,
                f"refusal: {reason}",
            )
            assert dev["version"] == 3  # still serving the trusted model
        wait_for(lambda: (fleet.device("cam-1")["fps"] or 0) > 0, 10, "still serving frames")

        # a refused forgery does not squat the revision the server's real message carries next
        nxt = fleet.device("cam-1")["desired_revision"] + 1
        forged = sign_manifest(v1_signed.unverified_manifest(), keys.release, keys.cert)
        tap.publish(
            "edgeloop/v1/devices/cam-1/desired",
            encode_message(DesiredState(device_id="cam-1", revision=nxt, deployments=[DeploymentMsg(manifest=forged)])),
        )
        wait_for(lambda: (fleet.device("cam-1")["reason"] or "").startswith("signature:"), 15, "forgery refused")
        fleet.cli("deploy", "colors:1", "--device", "cam-1", "--health-window", "0.5")  # a real, signed rollback
        wait_for(lambda: (d := fleet.device("cam-1"))["state"] == "committed" and d["version"] == 1, 30, "rolled back")
        assert fleet.device("cam-1")["reported_revision"] == nxt
        # that rollback, replayed in a later desired state (or to another device), is refused
        bound = v1_signed.unverified_manifest().model_copy(
            update={"rollback": True, "rollback_device": "cam-1", "rollback_revision": nxt}
        )
        replay = DesiredState(
            device_id="cam-1",
            revision=nxt + 5,
            deployments=[DeploymentMsg(manifest=sign_manifest(bound, release, cert))],
        )
        fleet.cli("deploy", "colors:3", "--device", "cam-1", "--health-window", "0.5")
        wait_for(
            lambda: (d := fleet.device("cam-1"))["state"] == "committed" and d["version"] == 3, 30, "colors:3 again"
        )
        tap.publish("edgeloop/v1/devices/cam-1/desired", encode_message(replay))
        dev = wait_for(lambda: (d := fleet.device("cam-1"))["state"] == "failed" and d, 15, "replayed rollback refused")
        assert dev["reason"].startswith("rollback:") and dev["version"] == 3
    finally:
        tap.close()
        agent.stop()
    wait_for(lambda: not fleet.device("cam-1")["online"], 10, "offline after the agent stops")

    # restart: the agent serves its committed model again straight from disk, before any message
    agent2 = start_agent(tmp_path, enrolled, str(assets["video"]), log_name="agent-restarted")
    try:
        wait_for(
            lambda: (d := fleet.device("cam-1"))["online"] and (d["fps"] or 0) > 0 and d["version"] == 3,
            30,
            "restarted agent serving colors:3",
        )
        assert agent2.log().count("downloaded") == 0
    finally:
        agent2.stop()


def test_agent_rides_out_a_dead_server(tmp_path: Path, mosquitto: str, assets: dict[str, Path]) -> None:
    """Desired state reaches the agent through the broker while the server's HTTP is down: the download
    is retried with backoff and completes once the server is back."""
    fleet = Server(tmp_path / "server", mosquitto)
    fleet.push(assets["model_v1"])
    enrolled = fleet.enroll("cam-dead")
    fleet.cli("deploy", "colors:1", "--device", "cam-dead", "--health-window", "0.5")
    port = fleet.port
    fleet.stop()
    agent = start_agent(tmp_path, enrolled, str(assets["video"]))
    try:
        wait_for(lambda: "retrying" in agent.log(), 20, "agent retrying the download")
        fleet = Server(tmp_path / "server", mosquitto, port=port)
        wait_for(
            lambda: (d := fleet.device("cam-dead"))["state"] == "committed" and d["version"] == 1,
            40,
            "colors:1 committed after the server came back",
        )
        assert agent.alive()
    finally:
        agent.stop()
        fleet.stop()
