"""Spawning real processes for tests: Mosquitto, `edgeloop server`, `edgeloop-agent`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `fn` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log_path = args, log
        self._fh = open(log, "ab")
        self.p = subprocess.Popen(
            args, stdout=self._fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._fh.close()
        return self.p.returncode


def start_mosquitto(workdir: Path, extra_conf: str = "") -> tuple[Proc, int]:
    exe = shutil.which("mosquitto")
    if exe is None:
        raise RuntimeError("mosquitto is not installed: run `make test`, which installs it")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_conf}")
    proc = Proc([exe, "-c", str(conf)], workdir / "mosquitto.log")
    wait_for(lambda: _port_open(port), 10, f"mosquitto on port {port}")
    return proc, port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


class Server:
    """A real `edgeloop server` process over HTTP."""

    def __init__(
        self,
        data_dir: Path,
        mqtt_url: str | None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(BIN / "edgeloop"), "server", "--data-dir", str(data_dir), "--port", str(self.port)]
        if mqtt_url:
            args += ["--mqtt-url", mqtt_url]
        else:
            args += ["--mqtt-port", "0"]
        data_dir.mkdir(parents=True, exist_ok=True)
        # a compile times each target for 0.2 s, not 1.5 s: the tests check its rows, not its precision
        run_env = {"EDGELOOP_COMPILE_MEASURE_S": "0.2", **(env or {})}
        self.proc = Proc(args + (extra or []), data_dir.parent / f"server-{self.port}.log", run_env)
        wait_for(self._healthy, 30, f"edgeloop server on {self.url}\n{self.proc.log()[-3000:]}")
        self.token = (
            (data_dir / "admin_token").read_text().strip()
            if not (env or {}).get("EDGELOOP_ADMIN_TOKEN")
            else (env or {})["EDGELOOP_ADMIN_TOKEN"]
        )
        self.http = httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {self.token}"})

    def _healthy(self) -> bool:
        if not self.proc.alive():
            raise AssertionError(f"server exited:\n{self.proc.log()[-3000:]}")
        r = httpx.get(self.url + "/healthz", timeout=1)
        return r.status_code == 200 and r.json()["mqtt_connected"]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EDGELOOP_SERVER_URL": self.url, "EDGELOOP_TOKEN": self.token}
        r = subprocess.run([str(BIN / "edgeloop"), *args], capture_output=True, text=True, env=env, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"edgeloop {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def push(self, model: Path, name: str = "colors", classes: str = "red,green,blue") -> dict[str, Any]:
        """`edgeloop models push … --json` for a classifier; returns the registered version."""
        out = self.cli(
            "models", "push", str(model), "--name", name, "--task", "classify", "--classes", classes, "--json"
        ).stdout
        return dict(json.loads(out))

    def enroll(self, device_id: str) -> dict[str, Any]:
        return dict(json.loads(self.cli("devices", "enroll", device_id, "--json").stdout))

    def wait_serving(self, device_id: str, version: int, timeout: float = 30, state: str = "committed") -> dict:
        """Wait until the device reports `version` in `state` with frames flowing (fps > 0)."""
        return wait_for(
            lambda: (
                (d := self.device(device_id))["version"] == version
                and d["state"] == state
                and (d["fps"] or 0) > 0
                and d
            ),
            timeout,
            f"{device_id} serving version {version} ({state}, fps > 0)",
        )

    def device(self, device_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/devices/{device_id}")
        r.raise_for_status()
        return dict(r.json())

    def stop(self) -> None:
        self.http.close()
        self.proc.stop()


def start_agent(
    workdir: Path,
    enrolled: dict[str, Any],
    source: str | list[str],
    name: str = "agent",
    extra: list[str] | None = None,
    log_name: str | None = None,
    config: dict[str, Any] | None = None,
) -> Proc:
    import yaml

    data = workdir / f"{name}-data"
    cfg = {
        "device_id": enrolled["device_id"],
        "server_url": enrolled["server_url"],
        "mqtt_url": enrolled["mqtt_url"],
        "token": enrolled["token"],
        "root_public_key": enrolled["root_public_key"],
        "sources": [{"uri": source}]
        if isinstance(source, str)
        else [{"uri": u, "name": f"cam{i}"} for i, u in enumerate(source)],
        "data_dir": str(data),
        "telemetry_interval_s": 0.5,
        **(config or {}),
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return Proc(
        [str(BIN / "edgeloop-agent"), "run", "--config", str(path), *(extra or [])], workdir / f"{log_name or name}.log"
    )


def deploy_all(server: Server, sim: Any, version: int, model: str = "colors") -> None:
    """Put every simulated device on `version` and wait for its baseline telemetry (rollout tests start here)."""
    for d in sim.devices:
        r = server.http.put(f"/api/v1/devices/{d}/deployment", json={"model": model, "version": version})
        r.raise_for_status()
    wait_for(lambda: all(v == version for v in sim.versions().values()), 20, f"simulated fleet on v{version}")
    wait_for(lambda: all((server.device(d)["fps"] or 0) > 0 for d in sim.devices), 20, "baseline telemetry")


# object storage in tests: moto's S3 server (see tests/test_storage.py for why moto), these credentials
S3_CREDS = {"AWS_ACCESS_KEY_ID": "edgeloop-test", "AWS_SECRET_ACCESS_KEY": "edgeloop-test-secret"}


def start_s3(port: int, log: Path) -> Proc:
    proc = Proc([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url, timeout=1).status_code < 500, 30, f"S3 endpoint on {url}")
    return proc


def make_bucket(endpoint: str, name: str) -> Any:
    """A new bucket on the S3 endpoint; returns a boto3 client for looking into it."""
    import boto3

    creds = {k.lower(): v for k, v in S3_CREDS.items()}
    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
    c.create_bucket(Bucket=name)
    return c


def bucket_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
