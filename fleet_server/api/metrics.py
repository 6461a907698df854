"""Prometheus metrics of the server (`GET /metrics`).

Fleet-wide figures are read from the database at scrape time, so every replica reports the same values
(dashboards take `max` across replicas); what one replica does itself (bridge counters, HTTP latency) is
per replica (dashboards `sum`). No label carries a secret: device ids, model names and states only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from fleet_server.asgi import StatusRecorder
from fleet_server.devices.tables import Device
from fleet_server.flywheel.tables import Sample
from fleet_server.jobs.tables import Job
from fleet_server.rollouts.states import ENGINE_STATES, LIVE
from fleet_server.rollouts.tables import Rollout, RolloutDevice
from fleet_server.services import Services

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FleetCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        s = self.services
        with Session(s.engine) as session:
            yield _grouped(session, "edgeloop_rollouts", "Rollouts by state.", {"state": Rollout.state})
            live = select(Rollout.id).where(col(Rollout.state).in_(LIVE | ENGINE_STATES))
            yield _grouped(
                session,
                "edgeloop_rollout_devices",
                "Devices inside live rollouts by their rollout state.",
                {"state": RolloutDevice.state},
                col(RolloutDevice.rollout_id).in_(live),
            )
            yield _grouped(session, "edgeloop_jobs", "Jobs by kind and state.", {"kind": Job.kind, "state": Job.state})
            yield _grouped(session, "edgeloop_samples", "Hard samples by review state.", {"state": Sample.state})
            yield _grouped(
                session,
                "edgeloop_devices",
                "Enrolled devices by connection and update state.",
                {"online": Device.online, "state": Device.state},
            )
            yield _grouped(
                session,
                "edgeloop_devices_serving",
                "Devices by the model version they serve.",
                {"model": Device.model, "version": Device.version},
                col(Device.model).is_not(None),
            )
        bridge = s.bridge.health()
        for key, help_ in (
            ("applied", "Device messages stored."),
            ("rejected", "Device messages refused (malformed, hostile, wrong device)."),
            ("telemetry_shed", "Telemetry points shed because the bridge was overloaded (state messages never are)."),
            ("db_retries", "State batches tried again because the database was unavailable."),
            ("errors", "Unexpected errors the bridge worker survived."),
            ("restarts", "Times the watchdog restarted the bridge worker."),
        ):
            c = CounterMetricFamily(f"edgeloop_bridge_{key}", help_)
            c.add_metric([], float(bridge[key]))
            yield c
        for key, help_, value in (
            ("edgeloop_bridge_state_queue_depth", "State messages waiting to be stored.", bridge["queued_state"]),
            ("edgeloop_bridge_queue_depth", "Telemetry points waiting to be stored.", bridge["queued_telemetry"]),
            ("edgeloop_bridge_up", "1 while device messages can flow (worker alive, broker connected).", bridge["ok"]),
            (
                "edgeloop_release_cert_days_left",
                "Days until the release key's certificate ends (rotate before 0).",
                (s.keys.cert.body().expires_at - datetime.now(timezone.utc)).total_seconds() / 86400,
            ),
        ):
            g = GaugeMetricFamily(key, help_)
            g.add_metric([], float(value))
            yield g


def _label(v: Any) -> str:
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, bool):
        return "1" if v else "0"
    return "none" if v is None else str(v)


def _grouped(session: Session, name: str, help_: str, by: dict[str, Any], *where: Any) -> GaugeMetricFamily:
    """A gauge of row counts per combination of the `by` columns (one GROUP BY query)."""
    g = GaugeMetricFamily(name, help_, labels=list(by))
    cols = list(by.values())
    q = sa_select(*cols, func.count()).where(*where).group_by(*cols)
    for row in session.execute(q).all():
        *keys, n = row
        g.add_metric([_label(k) for k in keys], float(n))
    return g


class Metrics:
    """The server's registry: the fleet collector plus HTTP latency by route, observed by a middleware."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = Histogram(
            "edgeloop_http_request_seconds",
            "HTTP request latency by route template and status class.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self._fleet: FleetCollector | None = None

    def attach(self, services: Services) -> None:
        if self._fleet is None:
            self._fleet = FleetCollector(services)
            self.registry.register(self._fleet)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: Any) -> Any:
        """ASGI middleware: each request's latency under its route template (never the raw path: ids stay out)."""

        async def middleware(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start, code = time.perf_counter(), StatusRecorder(send)
            try:
                await app(scope, receive, code)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.http.labels(scope["method"], template, f"{code.status // 100}xx").observe(
                    time.perf_counter() - start
                )

        return middleware
