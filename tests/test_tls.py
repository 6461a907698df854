"""TLS where devices talk: the managed Mosquitto's TLS listener, with the CA the server creates and hands
to devices at enrollment. If these fail, device tokens and desired states cross the network in clear, or a
device trusts a broker it should not."""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization

from fleet_server.settings import Settings
from fleet_server.tls import ensure_ca
from tests.helpers import Server, start_agent, wait_for

pytestmark = pytest.mark.e2e


def _tls_connect(host: str, port: int, ca_pem: str, user: str, token: str) -> None:
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{user}")
    c.username_pw_set(user, token)
    c.tls_set_context(ssl.create_default_context(cadata=ca_pem))
    try:
        c.connect(host, port, keepalive=10)  # the TLS handshake happens here
    finally:
        c.disconnect()


def test_devices_reach_the_broker_over_tls_with_the_pinned_ca_only(tmp_path: Path, assets: dict[str, Path]) -> None:
    fleet = Server(tmp_path / "server", None, extra=["--mqtt-broker", "mosquitto"], env={"EDGELOOP_MQTT_TLS_PORT": "0"})
    try:
        fleet.push(assets["model_v1"])
        enrolled = fleet.enroll("cam-1")
        assert enrolled["mqtt_url"].startswith("mqtts://127.0.0.1:")
        assert enrolled["mqtt_ca"].startswith("-----BEGIN CERTIFICATE-----")
        port = int(enrolled["mqtt_url"].rsplit(":", 1)[1])
        # a real agent, pinning the CA from its enrollment, runs the whole loop over TLS
        agent = start_agent(tmp_path, enrolled, str(assets["video"]), config={"mqtt_ca": enrolled["mqtt_ca"]})
        try:
            wait_for(lambda: fleet.device("cam-1")["online"], 20, "cam-1 online over TLS")
            fleet.cli("deploy", "colors:1", "--device", "cam-1", "--health-window", "0.5")
            fleet.wait_serving("cam-1", 1, timeout=40)
        finally:
            agent.stop()
        # the right CA and the name in the certificate: accepted
        _tls_connect("127.0.0.1", port, enrolled["mqtt_ca"], "cam-1", enrolled["token"])
        # another CA: refused before any credential is sent
        other, _ = ensure_ca(tmp_path / "other-ca")
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls_connect("127.0.0.1", port, other.public_bytes(serialization.Encoding.PEM).decode(), "cam-1", "x")
        # a host name the certificate does not carry: refused
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls_connect("localhost", port, enrolled["mqtt_ca"], "cam-1", enrolled["token"])
        text = fleet.cli("devices", "enroll", "cam-2").stdout
        assert "mqtt_url: mqtts://" in text and "mqtt_ca: |\n  -----BEGIN CERTIFICATE-----" in text
    finally:
        fleet.stop()


@pytest.mark.parametrize(
    "env, ok",
    [
        ({"mqtt_url": "mqtt://broker:1883", "public_url": "https://fleet.example"}, False),  # plaintext MQTT
        ({"mqtt_url": "mqtts://broker:8883", "public_url": "http://fleet.example"}, False),  # plaintext HTTP
        ({"mqtt_url": "mqtts://broker:8883", "public_url": "https://fleet.example"}, True),
        ({"mqtt_tls_port": 8883, "public_url": "https://fleet.example"}, True),  # the server's own broker, TLS
        ({"public_url": "https://fleet.example"}, False),  # an embedded broker
    ],
)
def test_production_refuses_plaintext_device_traffic(env: dict, ok: bool) -> None:
    settings = {"environment": "production", "admin_token": "t" * 32, **env}
    if ok:
        Settings(**settings)
    else:
        with pytest.raises(ValueError):
            Settings(**settings)
