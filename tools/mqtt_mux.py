"""Many MQTT connections driven by one thread: each paho client's socket sits in one selector, so a
simulator process can hold thousands of device connections (each with its own client id and credentials)
without a thread per connection. paho 2's external-loop calls do the protocol work: `loop_read` when a
socket is readable, `loop_write` when a client has queued output, `loop_misc` once a second for
keep-alives. Other threads may publish; the loop wakes to write it. Lost connections are reconnected.
Used by tools/fleet_sim.py (`connections="own"`).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class MqttMux:
    def __init__(self, host: str, port: int, keepalive: int = 60, connects_per_tick: int = 200) -> None:
        self.host, self.port, self.keepalive, self.connects_per_tick = host, port, keepalive, connects_per_tick
        self.sel = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self._pending: list[mqtt.Client] = []  # to connect (or reconnect), oldest first
        self._tried: set[int] = set()  # clients that have connected once: the next time is a reconnect
        self._writes: set[mqtt.Client] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = 0
        self.refused = 0
        self.reconnects = 0

    def add(
        self,
        client_id: str,
        username: str,
        password: str,
        on_connect: Callable[[mqtt.Client], None],
        on_message: Callable[[str, bytes], None],
        will: tuple[str, bytes] | None = None,
    ) -> mqtt.Client:
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        c.username_pw_set(username, password)
        c.max_queued_messages_set(0)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)

        def connected(client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                self.refused += 1
                log.warning("%s: the broker refused the connection: %s", client_id, rc)
                return
            self.connected += 1
            on_connect(client)

        def disconnected(client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                self.connected -= 1
                if not self._stop.is_set():
                    self.reconnects += 1
                    with self._lock:
                        self._pending.append(client)

        c.on_connect = connected
        c.on_disconnect = disconnected
        c.on_message = lambda _c, _u, m: on_message(m.topic, m.payload)
        c.on_socket_open = lambda client, _u, sock: self.sel.register(sock, selectors.EVENT_READ, client)
        c.on_socket_close = lambda _c, _u, sock: self._forget(sock)
        c.on_socket_register_write = lambda client, _u, _s: self._want_write(client)
        with self._lock:
            self.clients.append(c)
            self._pending.append(c)
        return c

    def _forget(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _want_write(self, c: mqtt.Client) -> None:
        with self._lock:
            self._writes.add(c)
        with contextlib.suppress(BlockingIOError):  # a wake-up is already waiting
            self._wake_w.send(b"\0")

    def start(self) -> MqttMux:
        self._thread = threading.Thread(target=self._loop, name="mqtt-mux", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for c in self.clients:
            try:
                c.disconnect()
                c.loop_write()
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    def _connect_some(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[: self.connects_per_tick], self._pending[self.connects_per_tick :]
        for c in batch:
            try:
                if id(c) in self._tried:
                    c.reconnect()
                else:
                    self._tried.add(id(c))
                    c.connect(self.host, self.port, self.keepalive)
            except OSError as exc:
                log.warning("connect failed (%s); retrying", exc)
                with self._lock:
                    self._pending.append(c)
                time.sleep(0.05)

    def _loop(self) -> None:
        last_misc = time.monotonic()
        while not self._stop.is_set():
            if self._pending:
                self._connect_some()
            for key, _ in self.sel.select(timeout=0.05):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                key.data.loop_read()
            with self._lock:
                writes, self._writes = self._writes, set()
            for c in writes:
                if c.want_write():
                    c.loop_write()
                    if c.want_write():
                        with self._lock:
                            self._writes.add(c)
            if time.monotonic() - last_misc > 1.0:
                last_misc = time.monotonic()
                for c in self.clients:
                    if c.socket() is not None:
                        c.loop_misc()
