"""The MQTT transport's flow control, on a real Mosquitto: a sender of thousands of retained desired states (a
rollout wave, the re-publish after a reconnect) waits for room in the outgoing queue instead of dropping
what does not fit. Without it a 20,000-device wave lost 202 desired states (`Message queue full`)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_agent.transport.mqtt import MqttTransport
from tests.helpers import start_mosquitto, wait_for

N = 3000  # three times the transport's outgoing queue


def _count(url: str, prefix: str) -> tuple[mqtt.Client, list[int], threading.Lock]:
    host, port = url.split("://")[1].rsplit(":", 1)
    got, lock = [0], threading.Lock()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            got[0] += 1

    subscribed = threading.Event()
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(host, int(port))
    c.subscribe(f"{prefix}/#", 1)
    c.loop_start()
    assert subscribed.wait(10), "subscription not acknowledged"
    return c, got, lock


def test_a_burst_past_the_queue_waits_for_room_and_loses_nothing(tmp_path: Path) -> None:
    # a broker of its own that queues without limit for the counting subscriber: on a loaded machine Mosquitto's
    # default (1,000 queued per client) drops what a slow subscriber has not read, and that is not the sender's
    # doing, which is what this test is about
    proc, port = start_mosquitto(tmp_path, extra_conf="max_queued_messages 0\n")
    mosquitto = f"mqtt://127.0.0.1:{port}"
    prefix = f"flow-{uuid.uuid4().hex[:6]}"
    sub, got, _ = _count(mosquitto, prefix)
    tx = MqttTransport(mosquitto, client_id=f"flow-{prefix}", clean_session=True)
    tx.start()
    try:
        assert tx.wait_connected(10)
        queued = [tx.publish(f"{prefix}/d{i}", b"x" * 200, qos=1, wait_s=30) for i in range(N)]
        assert all(queued)
        wait_for(lambda: got[0] >= N, 60, f"all {N} messages delivered (got {got})")
        assert got[0] == N

        # without waiting, a burst past the queue is refused in part, and says so
        refused = [tx.publish(f"{prefix}/e{i}", b"x" * 200, qos=1) for i in range(N)]
        assert not all(refused)
    finally:
        tx.stop()
        sub.loop_stop()
        sub.disconnect()
        proc.stop()
