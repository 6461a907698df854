"""The server's Prometheus metrics: what an operator's dashboards and alerts read. If these fail, a fleet
going offline or a bridge that stopped is invisible to monitoring, or a secret leaks into a scrape."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Server, wait_for

pytestmark = pytest.mark.e2e


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_fleet_gauges_bridge_counters_and_route_latency(tmp_path: Path, assets: dict[str, Path]) -> None:
    server = Server(tmp_path / "server", None, extra=["--mqtt-broker", "embedded"])
    try:
        server.push(assets["model_v1"])
        tokens = [server.enroll(d)["token"] for d in ("cam-1", "cam-2", "cam-3")]
        mqtt_url = json.loads(server.cli("devices", "enroll", "cam-4", "--json").stdout)["mqtt_url"]
        host, port = mqtt_url.split("://")[1].split(":")
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="metrics-probe")
        c.connect(host, int(port))
        c.loop_start()
        c.publish(
            "edgeloop/v1/devices/cam-1/status", json.dumps({"schema": 1, "device_id": "cam-1", "status": "online"}), 1
        ).wait_for_publish(5)
        wait_for(lambda: server.device("cam-1")["online"], 10, "cam-1 online")
        c.loop_stop()
        m = _samples(server.url)
        assert m[("edgeloop_devices", (("online", "1"), ("state", "none")))] == 1
        assert m[("edgeloop_devices", (("online", "0"), ("state", "none")))] == 3  # cam-2, cam-3, cam-4
        assert m[("edgeloop_bridge_up", ())] == 1 and m[("edgeloop_bridge_applied_total", ())] >= 1
        assert m[("edgeloop_release_cert_days_left", ())] > 360
        routes = {dict(k[1]).get("route") for k in m if k[0] == "edgeloop_http_request_seconds_count"}
        assert "/api/v1/devices/{device_id}" in routes and not any("cam-1" in (r or "") for r in routes)
        text = httpx.get(server.url + "/metrics").text
        assert server.token not in text and not any(t in text for t in tokens)
    finally:
        server.stop()
