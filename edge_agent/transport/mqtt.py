"""MQTT transport on paho-mqtt: persistent session, Last Will, automatic reconnect, resubscribe.

Incoming messages are handed to handlers on paho's network thread; handlers must be quick (the agent
and server put work on their own queues).
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt

from edge_agent.transport.base import Handler, Transport

log = logging.getLogger(__name__)
Ack = Callable[[], None]
AckedHandler = Callable[[str, bytes, Ack], None]


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> MqttUrl:
        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url.split('://')[0]!r}")
        tls = u.scheme in ("mqtts", "ssl")
        return cls(
            host=u.hostname or "localhost",
            port=u.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(u.username) if u.username else None,
            password=unquote(u.password) if u.password else None,
        )

    def safe(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttTransport(Transport):
    def __init__(
        self,
        url: str,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        will: Will | None = None,
        on_connect: list[tuple[str, bytes, int, bool]] | None = None,
        clean_session: bool = False,
        keepalive: int = 30,
        on_connected: Callable[[], None] | None = None,
        ca_pem: str | None = None,
        manual_ack: bool = False,
    ) -> None:
        """`manual_ack`: a QoS 1 message is acknowledged to the broker only when its handler says so (handlers
        given to `subscribe_acked`) or returns (plain handlers). With a persistent session (`clean_session`
        False) the broker re-delivers what was never acknowledged after a reconnect or a crash."""
        self.url = MqttUrl.parse(url)
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            manual_ack=manual_ack,
        )
        self._manual_ack = manual_ack
        self._epoch = 0  # connections so far: an ack is only valid on the connection that received the message
        user = username or self.url.username
        if user:
            self._client.username_pw_set(user, password or self.url.password)
        if self.url.tls:
            # the broker's certificate must chain to the pinned CA (or the system's) and name this host
            self._client.tls_set_context(
                ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
            )
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_queued_messages_set(1000)
        self._keepalive = keepalive
        self._subs: dict[str, tuple[Handler | AckedHandler, int, bool]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._birth = list(on_connect or [])
        self._on_connected = on_connected
        self._stopping = False
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, wait_s: float = 0.0) -> bool:
        """Queue a message for the broker. The outgoing queue holds 1,000: when it is full the message is
        dropped, unless `wait_s` > 0, which waits up to that long for room (flow control for a sender of
        many, such as a rollout wave's desired states). Returns whether it was queued."""
        deadline = time.monotonic() + wait_s
        while True:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
            return False
        return True

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        self._add_sub(topic_filter, handler, qos, False)

    def subscribe_acked(self, topic_filter: str, handler: AckedHandler, qos: int = 1) -> None:
        """The handler gets an `ack` to call once the message is safely handled (stored, say); until then the
        broker counts it in flight. Needs `manual_ack`."""
        if not self._manual_ack:
            raise ValueError("subscribe_acked needs a transport made with manual_ack=True")
        self._add_sub(topic_filter, handler, qos, True)

    def _add_sub(self, topic_filter: str, handler: Handler | AckedHandler, qos: int, acked: bool) -> None:
        with self._lock:
            self._subs[topic_filter] = (handler, qos, acked)
        if self.connected:
            self._client.subscribe(topic_filter, qos)

    def _acker(self, mid: int, qos: int) -> Ack:
        epoch = self._epoch
        done = threading.Event()

        def ack() -> None:
            # once, and only on the connection that delivered it: after a reconnect the broker sends it again
            if qos == 0 or done.is_set() or epoch != self._epoch:
                return
            done.set()
            self._client.ack(mid, qos)

        return ack

    # -- paho callbacks (network thread) -----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT %s refused the connection: %s", self.url.safe(), reason_code)
            return
        log.info("MQTT connected to %s (session present: %s)", self.url.safe(), flags.session_present)
        with self._lock:
            subs = list(self._subs.items())
        self._epoch += 1
        for topic_filter, (_, qos, _acked) in subs:
            client.subscribe(topic_filter, qos)
        for topic, payload, qos, retain in self._birth:
            client.publish(topic, payload, qos=qos, retain=retain)
        self._connected.set()
        if self._on_connected is not None:
            threading.Thread(target=self._on_connected, name="mqtt-on-connected", daemon=True).start()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stopping:
            log.warning("MQTT disconnected from %s: %s; reconnecting", self.url.safe(), reason_code)
        self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            subs = list(self._subs.items())
        ack = self._acker(msg.mid, msg.qos) if self._manual_ack else None
        handed = False
        levels = msg.topic.split("/")
        for topic_filter, (handler, _, acked) in subs:
            if _matches(_filter_levels(topic_filter), levels):
                try:
                    if acked and ack is not None:
                        handed = True
                        handler(msg.topic, msg.payload, ack)  # type: ignore[call-arg]
                    else:
                        handler(msg.topic, msg.payload)  # type: ignore[call-arg]
                except Exception:
                    log.exception("handler for %s failed", msg.topic)
                    handed = False  # it cannot be handled: do not leave it in flight forever
        if ack is not None and not handed:
            ack()  # nobody took it over: acknowledge as paho would


@functools.lru_cache(maxsize=256)
def _filter_levels(topic_filter: str) -> tuple[str, ...]:
    return tuple(_strip_share(topic_filter).split("/"))


def _matches(flt: tuple[str, ...], topic: list[str]) -> bool:
    """MQTT topic filter matching (`+` one level, `#` the rest). paho's topic_matches_sub builds a matcher
    tree on every call: at thousands of messages a second that was most of the server's MQTT thread."""
    if topic and topic[0].startswith("$") and flt and flt[0] in ("+", "#"):
        return False  # wildcards never match $SYS-style topics at the first level
    for i, part in enumerate(flt):
        if part == "#":
            return True
        if i >= len(topic) or (part != "+" and part != topic[i]):
            return False
    return len(flt) == len(topic)


def _strip_share(topic_filter: str) -> str:
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter
