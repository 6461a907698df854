"""The server's parts, built once from the settings and handed to routes as one typed object.

`Services.build(settings)` opens the database (migrated), the keys, the stores and the broker, and wires
the MQTT bridge, the rollout engine and the job runner; `start()` and `stop()` run them. Nothing here
happens at import, and nothing below the routes imports this module: domain code takes the one part it
needs (an engine, a `Deployer`), not the whole.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fleet_server.blobs import Blobs, open_remote
from fleet_server.bridge import MqttBridge
from fleet_server.broker import Broker, BrokerTls, choose_broker
from fleet_server.db import make_engine, migrate
from fleet_server.devices.deploy import Deployer
from fleet_server.flywheel.phash_index import PhashIndex
from fleet_server.flywheel.policy import check_policies
from fleet_server.jobs.backends import backend_for
from fleet_server.jobs.results import job_result_registrar
from fleet_server.jobs.runner import JobRunner
from fleet_server.keys import WARN_DAYS, KeyRing, ensure_admin_token, ensure_keys
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.settings import Settings
from fleet_server.storage import LocalStore, datasets_dir
from fleet_server.webhooks.dispatcher import WebhookDispatcher
from model_zoo.datasets.store import DatasetStore
from model_zoo.objects import JobFiles

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    keys: KeyRing
    admin_token: str
    admin_token_path: Path
    store: LocalStore
    sample_blobs: Blobs
    broker: Broker
    bridge: MqttBridge
    deployer: Deployer
    rollouts: RolloutEngine
    jobs: JobRunner
    webhooks: WebhookDispatcher
    sample_index: PhashIndex
    replica: str

    @property
    def jobs_dir(self) -> Path:
        return self.settings.data_dir / "jobs"

    @property
    def datasets_dir(self) -> Path:
        return datasets_dir(self.settings.data_dir)

    @property
    def datasets(self) -> DatasetStore:
        """Dataset versions: the local folder, a read-through cache of the bucket's when there is one."""
        return DatasetStore(self.datasets_dir, self.store.blobs.remote)

    @property
    def mqtt_public_url(self) -> str:
        return self.broker.public_url

    @classmethod
    def build(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        migrate(engine)
        keys = ensure_keys(settings.data_dir)
        given = settings.admin_token.get_secret_value() if settings.admin_token else None
        token, token_path = ensure_admin_token(settings.data_dir, given)
        remote = open_remote(settings.storage_url)
        store = LocalStore(settings.data_dir / "artifacts", remote)
        sample_blobs = Blobs(settings.data_dir / "samples", remote, prefix="samples/")
        public_host = urlparse(settings.base_url).hostname or "127.0.0.1"
        bind = "127.0.0.1" if settings.host in ("127.0.0.1", "localhost") else settings.host
        broker = choose_broker(
            settings.mqtt_url,
            settings.mqtt_public_url,
            settings.mqtt_shared,
            settings.data_dir,
            bind,
            settings.mqtt_port,
            public_host,
            settings.mqtt_broker,
            BrokerTls(settings.mqtt_tls_port, settings.mqtt_tls_cert, settings.mqtt_tls_key, settings.mqtt_tls_ca)
            if settings.mqtt_tls_port is not None
            else None,
            settings.mqtt_auth_dir,
        )
        if broker.ca_pem is None and settings.mqtt_tls_ca is not None:  # an external broker's TLS listener
            broker.ca_pem = settings.mqtt_tls_ca.read_text()
        bridge = MqttBridge(
            engine,
            broker.url,
            shared=broker.supports_shared,
            queue_size=settings.bridge_queue,
            client_id=settings.mqtt_client_id or broker.session_client_id,
            history_s=settings.telemetry_history_s,
            retention_h=settings.telemetry_retention_h,
            keepalive_s=settings.mqtt_keepalive_s,
        )
        deployer = Deployer(keys, bridge, settings.health_window_s)
        replica = f"{socket.gethostname()}-{os.getpid()}"
        rollouts = RolloutEngine(engine, deployer, interval_s=settings.rollout_tick_s, name=replica)
        jobs = JobRunner(
            engine,
            job_result_registrar(settings, keys, store),
            settings.data_dir / "jobs",
            replica,
            periodic=lambda: check_policies(
                engine, settings, DatasetStore(datasets_dir(settings.data_dir), remote), sample_blobs, store
            ),
            lease=timedelta(seconds=settings.job_lease_s),
            backend=backend_for(settings.jobs_url) if settings.run_jobs else None,
            files=JobFiles(settings.data_dir, remote),
        )
        return cls(
            settings=settings,
            engine=engine,
            keys=keys,
            admin_token=token,
            admin_token_path=token_path,
            store=store,
            sample_blobs=sample_blobs,
            broker=broker,
            bridge=bridge,
            deployer=deployer,
            rollouts=rollouts,
            jobs=jobs,
            webhooks=WebhookDispatcher(
                engine, replica, timeout_s=settings.webhook_timeout_s, retry_base_s=settings.webhook_retry_base_s
            ),
            sample_index=PhashIndex(),
            replica=replica,
        )

    def start(self) -> None:
        self.broker.start()
        self.bridge.start()
        if not self.bridge.wait_connected(10):
            log.warning("MQTT broker not reachable yet; desired state is published once it is")
        self.rollouts.start()
        if self.settings.run_jobs:
            self.jobs.start()
        self.webhooks.start()
        log.info("edgeloop server ready: api %s, mqtt %s", self.settings.base_url, self.broker.public_url)
        expires = self.keys.cert.body().expires_at
        if expires - datetime.now(timezone.utc) <= timedelta(days=WARN_DAYS):
            log.warning("the release key's certificate expires %s: run `edgeloop keys rotate-release`", expires)

    def readiness(self) -> dict[str, str]:
        """What this replica depends on, each "ok" or why not: the database, the broker, object storage."""
        checks: dict[str, str] = {}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; the reason is reported
            checks["database"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        checks["broker"] = "ok" if self.bridge.transport.connected else "not connected"
        remote = self.store.blobs.remote
        if remote is None:
            checks["storage"] = "ok"
        else:
            try:
                remote.check()
                checks["storage"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["storage"] = str(exc)[:200]
        return checks

    def stop(self) -> None:
        self.rollouts.stop()
        self.jobs.stop()
        self.webhooks.stop()
        self.bridge.stop()
        self.broker.stop()
        self.engine.dispose()
