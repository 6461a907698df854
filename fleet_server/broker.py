"""The MQTT broker the server talks through: configured, or one it runs itself.

- `ExternalBroker`: `--mqtt-url` given; per-device ACLs are the broker operator's job (see README).
- `MosquittoBroker`: mosquitto installed; the server writes its config with per-device credentials and
  an ACL that lets each device reach only `edgeloop/v1/devices/<its id>/...`; enrolling a device adds
  its credential and reloads the broker (SIGHUP).
- `EmbeddedBroker`: neither; an in-process amqtt broker for trying edgeloop out (no per-device ACLs).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import getpass
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write_bytes
from edge_agent.protocol.topics import TOPIC_PREFIX
from edge_agent.transport.mqtt import MqttUrl
from fleet_server.procs import die_with_parent, stop_stale
from fleet_server.tls import ensure_broker_cert

log = logging.getLogger(__name__)
SERVER_USER = "edgeloop-server"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def mosquitto_hash(password: str, iterations: int = 101) -> str:
    """Mosquitto 2 password-file hash ($7$: PBKDF2-SHA512, 12-byte salt)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass
class BrokerTls:
    """The TLS listener of a managed Mosquitto: its port, and the operator's certificate (else the server's CA
    signs one)."""

    port: int
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


class MosquittoAuth:
    """Mosquitto's password file and ACL in one folder: the server's account (all of `edgeloop/#`) and one
    account per device (its own topics only). Every change is a read-modify-write under a file lock, so
    replicas sharing the folder (an external Mosquitto's auth volume) never lose each other's changes."""

    def __init__(self, folder: Path, server_user: str, server_password: str, mode: int = 0o600) -> None:
        self.dir, self.server_user, self.mode = folder, server_user, mode
        self._server_password = server_password
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.dir / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _edit(self, drop: str | None, add: str | None) -> None:
        self._edit_many({drop} if drop else set(), [add] if add else [])

    def _edit_many(self, drop: set[str], add: list[str]) -> None:
        passwd = self.dir / "passwd"
        text = passwd.read_text() if passwd.exists() else ""
        keep = [ln for ln in text.splitlines() if ln and ln.split(":", 1)[0] not in drop]
        atomic_write_bytes(passwd, ("\n".join([*keep, *add]) + "\n").encode(), mode=self.mode)

    def write_base(self) -> None:
        """The server's own account and the ACL (devices' lines stay as they are)."""
        with self._locked():
            self._edit(self.server_user, f"{self.server_user}:{mosquitto_hash(self._server_password)}")
            acl = "\n".join(
                [
                    f"user {self.server_user}",
                    "topic readwrite edgeloop/#",
                    "",
                    "# every other user is a device: its own topics only",
                    f"pattern read {TOPIC_PREFIX}/%u/desired",
                    *(f"pattern write {TOPIC_PREFIX}/%u/{k}" for k in ("reported", "status", "telemetry", "events")),
                    "",
                ]
            )
            atomic_write_bytes(self.dir / "acl", acl.encode(), mode=self.mode)

    def set_device(self, device_id: str, token: str | None) -> None:
        """A device's credential (a new token replaces the old one), or none (`token` None: shut out)."""
        with self._locked():
            self._edit(device_id, f"{device_id}:{mosquitto_hash(token)}" if token is not None else None)

    def set_devices(self, tokens: dict[str, str]) -> None:
        """Many devices' credentials in one write (a batch enrolment)."""
        with self._locked():
            self._edit_many(set(tokens), [f"{d}:{mosquitto_hash(t)}" for d, t in tokens.items()])


class Broker:
    url: str  # how the server connects (may carry credentials)
    public_url: str  # what devices are told
    supports_shared: bool = True
    per_device_auth: bool = False
    ca_pem: str | None = None  # the CA devices pin for the TLS listener, handed to them at enrollment
    session_client_id: str | None = None  # a stable id for the server's persistent session, where one is safe

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def add_device(self, device_id: str, token: str) -> None: ...

    def add_devices(self, tokens: dict[str, str]) -> None:
        """Many credentials at once: one write and one broker reload, not one per device."""
        for device_id, token in tokens.items():
            self.add_device(device_id, token)

    def remove_device(self, device_id: str) -> None: ...


class ExternalBroker(Broker):
    """A broker someone else runs. With `auth_dir` (a folder that Mosquitto reads its password file and ACL
    from, and reloads when they change), the server writes the per-device accounts there, as it does for the
    Mosquitto it runs; without it, per-device credentials are the broker operator's job."""

    def __init__(self, url: str, public_url: str | None, shared: bool, auth_dir: Path | None = None) -> None:
        self.url = url
        self.public_url = public_url or _strip_credentials(url)
        self.supports_shared = shared
        self.auth: MosquittoAuth | None = None
        if auth_dir is not None:
            parsed = MqttUrl.parse(url)
            if not parsed.username or not parsed.password:
                raise RuntimeError(
                    "mqtt_auth_dir needs the server's own credentials in mqtt_url (mqtt://user:pass@host)"
                )
            # group-readable: the broker's process reads it, under the group the two share
            self.auth = MosquittoAuth(auth_dir, parsed.username, parsed.password, mode=0o640)
            self.per_device_auth = True

    def start(self) -> None:
        if self.auth is not None:
            self.auth.write_base()
            log.info("writing the broker's accounts and ACL into %s", self.auth.dir)

    def add_device(self, device_id: str, token: str) -> None:
        if self.auth is not None:
            self.auth.set_device(device_id, token)

    def add_devices(self, tokens: dict[str, str]) -> None:
        if self.auth is not None:
            self.auth.set_devices(tokens)

    def remove_device(self, device_id: str) -> None:
        if self.auth is not None:
            self.auth.set_device(device_id, None)


class MosquittoBroker(Broker):
    per_device_auth = True
    session_client_id = SERVER_USER  # the broker takes the user name as the client id anyway

    def __init__(self, data_dir: Path, host: str, port: int, public_host: str, tls: BrokerTls | None = None) -> None:
        self.dir = data_dir / "broker"
        self.tls = tls
        # with TLS for devices, the plain listener serves this host only (the server's own connection)
        self.host = "127.0.0.1" if tls is not None else host
        self.tls_host = host
        self.port = port or free_port(self.host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        pw_path = self.dir / "server_password"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not pw_path.exists():
            atomic_write_bytes(pw_path, secrets.token_urlsafe(24).encode(), mode=0o600)
        self._server_password = pw_path.read_text().strip()
        self.auth = MosquittoAuth(self.dir, SERVER_USER, self._server_password)
        self.url = f"mqtt://{SERVER_USER}:{self._server_password}@{self.host}:{self.port}"
        self.public_url = f"mqtt://{public_host}:{self.port}"
        if tls is not None:
            self.tls_port = tls.port or free_port(host)
            if tls.cert is None:  # the server's own CA signs a certificate for the name devices use
                ca, tls.cert, tls.key = ensure_broker_cert(data_dir / "tls", [public_host])
                tls.ca = tls.ca or ca
            self.ca_pem = tls.ca.read_text() if tls.ca is not None else None
            self.public_url = f"mqtts://{public_host}:{self.tls_port}"

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None

    def _tls_listener(self) -> list[str]:
        if self.tls is None:
            return []
        return [f"listener {self.tls_port} {self.tls_host}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]

    def _write_config(self) -> Path:
        self.auth.write_base()
        (self.dir / "data").mkdir(exist_ok=True)
        conf = "\n".join(
            [
                f"listener {self.port} {self.host}",
                *(
                    [
                        f"listener {self.tls_port} {self.tls_host}",
                        f"certfile {self.tls.cert}",
                        f"keyfile {self.tls.key}",
                    ]
                    if self.tls is not None
                    else []
                ),
                "allow_anonymous false",
                # the client id is the user name: no device can take over another's session by naming its id
                "use_username_as_clientid true",
                f"password_file {self.dir / 'passwd'}",
                f"acl_file {self.dir / 'acl'}",
                "persistence true",
                f"persistence_location {self.dir / 'data'}/",
                f"log_dest file {self.dir / 'mosquitto.log'}",
                "max_packet_size 1048576",
                # the server acknowledges state messages after storing them: room for a batch in flight, and a
                # deep queue for its session while it restarts
                "max_inflight_messages 1000",
                "max_queued_messages 200000",
                f"user {getpass.getuser()}",
                "",
            ]
        )
        path = self.dir / "mosquitto.conf"
        atomic_write_bytes(path, conf.encode(), mode=0o600)
        return path

    def start(self) -> None:
        conf = self._write_config()
        # a Mosquitto left running by a server that was killed still holds the old accounts: replace it
        stop_stale(self.dir / "mosquitto.pid", str(conf))
        if wait_port(self.host, self.port, 0.1):
            raise RuntimeError(f"cannot run mosquitto on {self.host}:{self.port}: another process holds the port")
        self._proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,  # it dies with this server, never left as an orphan
        )
        (self.dir / "mosquitto.pid").write_text(str(self._proc.pid))
        # the port open is not enough: another process may hold it; ours must be the one running
        if not wait_port(self.host, self.port, 10.0) or self._proc.poll() is not None:
            err = b""
            if self._proc.poll() is not None and self._proc.stderr:
                err = self._proc.stderr.read()
            self.stop()
            raise RuntimeError(
                f"mosquitto did not start on {self.host}:{self.port}: "
                f"{err.decode(errors='replace').strip() or 'see ' + str(self.dir / 'mosquitto.log')}"
            )
        if self.tls is not None:
            probe = "127.0.0.1" if self.tls_host in ("0.0.0.0", "::", "") else self.tls_host
            if not wait_port(probe, self.tls_port, 10.0):
                self.stop()
                raise RuntimeError(f"mosquitto did not open its TLS listener on {self.tls_host}:{self.tls_port}")
        log.info("mosquitto running on %s:%d (config %s)", self.host, self.port, conf)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def add_device(self, device_id: str, token: str) -> None:
        self.auth.set_device(device_id, token)
        self._reload()

    def add_devices(self, tokens: dict[str, str]) -> None:
        self.auth.set_devices(tokens)
        self._reload()

    def remove_device(self, device_id: str) -> None:
        self.auth.set_device(device_id, None)
        self._reload()

    def _reload(self) -> None:
        with self._lock:
            if self._proc and self._proc.poll() is None:
                os.kill(self._proc.pid, signal.SIGHUP)


class EmbeddedBroker(Broker):
    supports_shared = False

    def __init__(self, host: str, port: int, public_host: str) -> None:
        self.host, self.port = host, port or free_port(host)
        self.url = f"mqtt://{host}:{self.port}"
        self.public_url = f"mqtt://{public_host}:{self.port}"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None

    def start(self) -> None:

        from amqtt.broker import Broker as AmqttBroker

        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            cfg = {"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}}
            self._broker = AmqttBroker(cfg, loop=loop)
            loop.run_until_complete(self._broker.start())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"embedded broker did not start on {self.host}:{self.port}")
        log.warning(
            "embedded MQTT broker on %s:%d: no per-device ACLs; use Mosquitto in production", self.host, self.port
        )

    def stop(self) -> None:

        if self._loop is not None and self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(5)
            except Exception:
                log.debug("embedded broker shutdown raised", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)


def _strip_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rsplit('@', 1)[-1]}{slash}{path}"


def choose_broker(
    mqtt_url: str | None,
    public_url: str | None,
    shared: bool,
    data_dir: Path,
    bind_host: str,
    port: int,
    public_host: str,
    kind: str = "auto",
    tls: BrokerTls | None = None,
    auth_dir: Path | None = None,
) -> Broker:
    if mqtt_url:
        return ExternalBroker(mqtt_url, public_url, shared, auth_dir)
    if auth_dir is not None:
        raise RuntimeError("mqtt_auth_dir is for an external broker (mqtt_url); the server's own keeps its files")
    if kind == "mosquitto" and not MosquittoBroker.available():
        raise RuntimeError("mqtt_broker=mosquitto but no mosquitto binary is on PATH (apt-get install mosquitto)")
    if tls is not None and (kind == "embedded" or not MosquittoBroker.available()):
        raise RuntimeError("a TLS listener for devices needs Mosquitto (apt-get install mosquitto)")
    if kind != "embedded" and MosquittoBroker.available():
        return MosquittoBroker(data_dir, bind_host, port, public_host, tls)
    return EmbeddedBroker(bind_host, port, public_host)
