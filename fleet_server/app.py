"""App factory. `create_app(settings)` builds everything; the lifespan starts and stops it."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from fastapi import FastAPI

from fleet_server.api import (
    artifacts,
    datasets_api,
    devices,
    flywheel_api,
    jobs_api,
    models,
    rollouts_api,
    samples_api,
    users_api,
)
from fleet_server.blobs import Blobs, open_remote
from fleet_server.bridge import MqttBridge
from fleet_server.broker import choose_broker
from fleet_server.db import make_engine, migrate
from fleet_server.flywheel.policy import check_policies
from fleet_server.jobs.runner import JobRunner
from fleet_server.keys import ensure_admin_token, ensure_keys
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.settings import Settings
from fleet_server.storage import LocalStore
from fleet_server.zoo import datasets_dir, job_result_registrar

log = logging.getLogger(__name__)


def build_state(settings: Settings) -> dict[str, Any]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    migrate(engine)
    keys = ensure_keys(settings.data_dir)
    given = settings.admin_token.get_secret_value() if settings.admin_token else None
    token, token_path = ensure_admin_token(settings.data_dir, given)
    remote = open_remote(settings.storage_url)
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
    )
    return {
        "settings": settings,
        "engine": engine,
        "keys": keys,
        "admin_token": token,
        "admin_token_path": token_path,
        "store": LocalStore(settings.data_dir / "artifacts", remote),
        "sample_blobs": Blobs(settings.data_dir / "samples", remote, prefix="samples/"),
        "broker": broker,
    }


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        for k, v in state.items():
            setattr(app.state, k, v)
        broker = state["broker"]
        broker.start()
        app.state.mqtt_public_url = broker.public_url
        bridge = MqttBridge(
            state["engine"],
            broker.url,
            shared=broker.supports_shared,
            history_s=settings.telemetry_history_s,
            retention_h=settings.telemetry_retention_h,
        )
        app.state.bridge = bridge
        bridge.start()
        if not bridge.wait_connected(10):
            log.warning("MQTT broker not reachable yet; desired state is published once it is")
        replica = f"{socket.gethostname()}-{os.getpid()}"
        rollouts = RolloutEngine(state["engine"], app.state, interval_s=settings.rollout_tick_s, name=replica)
        app.state.rollouts = rollouts
        rollouts.start()
        app.state.jobs_dir = settings.data_dir / "jobs"
        jobs = JobRunner(
            state["engine"],
            job_result_registrar(settings, state["keys"], state["store"]),
            app.state.jobs_dir,
            replica,
            periodic=lambda: check_policies(
                state["engine"], settings, datasets_dir(settings.data_dir), state["sample_blobs"], state["store"]
            ),
            lease=timedelta(seconds=settings.job_lease_s),
        )
        app.state.jobs = jobs
        if settings.run_jobs:
            jobs.start()
        log.info("edgeloop server ready: api %s, mqtt %s", settings.base_url, broker.public_url)
        try:
            yield
        finally:
            rollouts.stop()
            jobs.stop()
            bridge.stop()
            broker.stop()
            state["engine"].dispose()

    app = FastAPI(title="edgeloop fleet server", version="0.1.0", lifespan=lifespan)
    app.include_router(devices.router)
    app.include_router(models.router)
    app.include_router(artifacts.router)
    app.include_router(rollouts_api.router)
    app.include_router(jobs_api.router)
    app.include_router(datasets_api.router)
    app.include_router(samples_api.router)
    app.include_router(flywheel_api.router)
    app.include_router(users_api.router)
    from fleet_server.console.routes import install as install_console

    install_console(app)
    app.add_middleware(users_api.audit_middleware, engine_of=lambda: app.state.engine)  # type: ignore[arg-type]

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        bridge = getattr(app.state, "bridge", None)
        counters = (
            {"applied": bridge.applied, "rejected": bridge.rejected, "overflow": bridge.overflow} if bridge else {}
        )
        return {"ok": True, "mqtt_connected": bool(bridge and bridge.transport.connected), "bridge": counters}

    return app
