"""App factory. `create_app(settings)` builds the routes; the lifespan builds, starts and stops the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from fleet_server.api.deps import ERRORS
from fleet_server.api.metrics import CONTENT_TYPE, Metrics
from fleet_server.api.routes import ROUTERS
from fleet_server.audit import audit_middleware
from fleet_server.console.routes import install as install_console
from fleet_server.services import Services
from fleet_server.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings)
        app.state.services = services
        metrics.attach(services)
        services.start()
        try:
            yield
        finally:
            services.stop()

    metrics = Metrics()
    app = FastAPI(title="edgeloop fleet server", version="0.1.0", lifespan=lifespan)
    for router in ROUTERS:
        app.include_router(router, responses=ERRORS)
    install_console(app)
    app.add_middleware(audit_middleware, engine_of=lambda: app.state.services.engine)
    app.add_middleware(metrics.middleware)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus text format: fleet gauges from the database (equal on every replica), this replica's
        bridge counters and HTTP latency by route. Holds no secret."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/readyz", tags=["health"], responses={503: {"description": "a dependency is unreachable"}})
    def readyz() -> JSONResponse:
        """200 when this replica can serve: its database answers, the broker takes its connection and object
        storage (where configured) is reachable; 503 with each check's reason otherwise. For load balancers
        and Kubernetes readiness probes (liveness: /healthz)."""
        services: Services | None = getattr(app.state, "services", None)
        checks = services.readiness() if services else {"server": "starting"}
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/healthz", tags=["health"], responses={503: {"description": "device traffic cannot flow"}})
    def healthz() -> JSONResponse:
        """200 while device messages flow in and desired states out; 503 (same body) when the bridge's worker
        is down or the broker does not take the server's connection."""
        services: Services | None = getattr(app.state, "services", None)
        bridge = services.bridge.health() if services else {"ok": False, "mqtt_connected": False}
        body: dict[str, Any] = {"ok": bridge["ok"], "mqtt_connected": bridge["mqtt_connected"], "bridge": bridge}
        if services is not None:  # a certificate close to its end: time for `edgeloop keys rotate-release`
            left = services.keys.cert.body().expires_at - datetime.now(timezone.utc)
            body["release_cert_days_left"] = round(left.total_seconds() / 86400, 1)
        return JSONResponse(body, status_code=200 if body["ok"] else 503)

    return app
