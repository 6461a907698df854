"""Webhooks through a real HTTP receiver: every event arrives at least once with a valid HMAC signature,
through a receiver outage, a receiver that answers 500 or hangs, and a server restart. If these fail, an
operator's pager misses a rollout abort, or a forged notification cannot be told from a real one."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from tests.helpers import Server, free_port, wait_for

pytestmark = pytest.mark.e2e
SECRET = "a-webhook-secret-for-tests-0123456789"
FAST = {"EDGELOOP_WEBHOOK_RETRY_BASE_S": "0.3", "EDGELOOP_WEBHOOK_TIMEOUT_S": "1"}


class Receiver:
    """A local HTTP endpoint that records what it is sent; `mode` makes it answer 200, 500 or hang."""

    def __init__(self, port: int) -> None:
        self.port, self.got, self.mode, self.calls = port, [], "ok", 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls += 1
                if outer.mode == "hang":
                    time.sleep(3)
                code = 500 if outer.mode == "fail" else 200
                if code == 200:
                    outer.got.append({"headers": dict(self.headers), "body": body})
                self.send_response(code)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def events(self) -> list[tuple[str, dict]]:
        out = []
        for g in self.got:
            sig = "sha256=" + hmac.new(SECRET.encode(), g["body"], hashlib.sha256).hexdigest()
            assert hmac.compare_digest(g["headers"]["X-Edgeloop-Signature-256"], sig), "bad signature"
            body = json.loads(g["body"])
            assert (
                g["headers"]["X-Edgeloop-Delivery"] == body["id"] and g["headers"]["X-Edgeloop-Event"] == body["event"]
            )
            out.append((body["event"], body))
        return out


def test_events_arrive_signed_at_least_once_through_outages_and_a_restart(
    tmp_path: Path, mosquitto: str, assets: dict[str, Path]
) -> None:
    port = free_port()
    rx = Receiver(port)
    s = Server(tmp_path / "server", mosquitto, env=FAST)
    try:
        # bad input first: not http(s), the server itself, an unknown event, a short secret
        for body, fragment in [
            ({"url": "ftp://example.com/x", "events": ["drift"]}, "http:// or https://"),
            ({"url": f"http://127.0.0.1:{s.port}/api/v1/models", "events": ["drift"]}, "this server itself"),
            ({"url": f"http://127.0.0.1:{port}/", "events": ["coffee.ready"]}, "unknown events"),
            ({"url": f"http://127.0.0.1:{port}/", "events": ["drift"], "secret": "short"}, "16 characters"),
        ]:
            r = s.http.post("/api/v1/webhooks", json=body)
            assert r.status_code == 422 and fragment in r.json()["detail"], r.text
        out = s.cli(
            "webhooks", "add", f"http://127.0.0.1:{port}/hook", "--events", "model.registered,device.offline",
            "--secret", SECRET, "--json",
        ).stdout  # fmt: skip
        hook = json.loads(out)
        assert hook["events"] == ["device.offline", "model.registered"]

        s.push(assets["model_v1"])  # -> model.registered
        wait_for(lambda: len(rx.got) == 1, 15, "model.registered delivered")
        ((event, body),) = rx.events()
        assert event == "model.registered" and body["data"]["model"] == "colors" and body["data"]["version"] == 1

        # a device drops off -> device.offline, while the receiver answers 500: retried with backoff
        s.enroll("hook-cam")
        host, mport = mosquitto.split("://")[1].rsplit(":", 1)
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="hook-cam-probe")
        c.connect(host, int(mport))
        c.loop_start()
        topic = "edgeloop/v1/devices/hook-cam/status"
        c.publish(topic, json.dumps({"schema": 1, "device_id": "hook-cam", "status": "online"}), 1).wait_for_publish(5)
        wait_for(lambda: s.device("hook-cam")["online"], 10, "hook-cam online")
        rx.mode = "fail"
        c.publish(topic, json.dumps({"schema": 1, "device_id": "hook-cam", "status": "offline"}), 1).wait_for_publish(5)
        c.loop_stop()
        deliveries = lambda: s.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json()  # noqa: E731
        wait_for(
            lambda: any(d["event"] == "device.offline" and d["attempts"] >= 2 for d in deliveries()), 20, "retries"
        )
        rx.mode = "hang"  # a receiver that never answers in time costs one timeout, then a retry
        wait_for(lambda: rx.calls >= 4, 20, "a try against the hanging receiver")
        assert s.http.get("/healthz", timeout=2).status_code == 200  # the server does not wait for it

        # the receiver goes away entirely; a second version is registered; the server restarts meanwhile
        rx.stop()
        s.push(assets["model_v2"])
        pending = [d for d in deliveries() if d["state"] == "pending"]
        assert {d["event"] for d in pending} == {"device.offline", "model.registered"}, pending
        s.stop()
        s = Server(tmp_path / "server", mosquitto, env=FAST, port=s.port)
        rx = Receiver(port)  # back, on the same address
        wait_for(lambda: all(d["state"] == "delivered" for d in deliveries()), 30, "everything delivered")
        got = rx.events()
        assert ("device.offline", "hook-cam") in {(e, b["data"].get("device")) for e, b in got}
        assert ("model.registered", 2) in {(e, b["data"].get("version")) for e, b in got}
        keys = [b["id"] for _, b in got]
        assert len(set(keys)) == 2  # at least once: a repeat carries the same idempotency key

        listed = s.http.get("/api/v1/webhooks").json()
        assert listed[0]["deliveries"] == {"pending": 0, "delivered": 3, "failed": 0}
        assert SECRET not in json.dumps(listed) and SECRET not in s.proc.log()
        assert SECRET not in httpx.get(s.url + "/metrics").text
        assert "delivered 3" in s.cli("webhooks", "list").stdout
    finally:
        rx.stop()
        s.stop()
