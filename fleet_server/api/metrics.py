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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from fleet_server.asgi import StatusRecorder
from fleet_server.devices.tables import Device
from fleet_server.flywheel.drift import confidence_drift
from fleet_server.flywheel.policy import latest_trained
from fleet_server.flywheel.tables import RetrainPolicy, Sample
from fleet_server.jobs.tables import Job
from fleet_server.rollouts.states import ENGINE_STATES, LIVE, RolloutState
from fleet_server.rollouts.tables import Rollout, RolloutDevice
from fleet_server.services import Services
from fleet_server.webhooks.tables import WebhookDelivery

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
            yield from _rollout_waves(session)
            yield _job_durations(session)
            yield from _drift(session)
            yield _grouped(session, "edgeloop_samples", "Hard samples by review state.", {"state": Sample.state})
            yield _grouped(
                session, "edgeloop_webhook_deliveries", "Webhook deliveries by state.", {"state": WebhookDelivery.state}
            )
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
            ("superseded", "Reported states replaced by a newer one of the same device in the same batch."),
            ("stale", "Reported states older than one already applied (delivered late), not applied."),
            ("db_retries", "State batches tried again because the database was unavailable."),
            ("errors", "Unexpected errors the bridge worker survived."),
            ("restarts", "Times the watchdog restarted the bridge worker."),
        ):
            c = CounterMetricFamily(f"edgeloop_bridge_{key}", help_)
            c.add_metric([], float(bridge[key]))
            yield c
        storage = CounterMetricFamily(
            "edgeloop_storage_errors",
            "Failed artifact and sample file operations (disk or object storage).",
            labels=["op"],
        )
        errors = s.store.blobs.errors + s.sample_blobs.errors
        for op in ("write", "read", "delete"):
            storage.add_metric([op], float(errors.get(op, 0)))
        yield storage
        for key, help_, value in (
            ("edgeloop_bridge_state_queue_depth", "State messages waiting to be stored.", bridge["queued_state"]),
            ("edgeloop_bridge_queue_depth", "Telemetry points waiting to be stored.", bridge["queued_telemetry"]),
            ("edgeloop_bridge_up", "1 while device messages can flow (worker alive, broker connected).", bridge["ok"]),
            ("edgeloop_bridge_lag_seconds", "Age of the oldest device message waiting to be stored.", bridge["lag_s"]),
            (
                "edgeloop_release_cert_days_left",
                "Days until the release key's certificate ends (rotate before 0).",
                (s.keys.cert.body().expires_at - datetime.now(timezone.utc)).total_seconds() / 86400,
            ),
        ):
            g = GaugeMetricFamily(key, help_)
            g.add_metric([], float(value))
            yield g


def _rollout_waves(session: Session) -> Iterator[GaugeMetricFamily]:
    """For running rollouts: how long the current wave has run, and how long it may (bake + offline timeout)."""
    age = GaugeMetricFamily(
        "edgeloop_rollout_wave_age_seconds",
        "Seconds the current wave of a running rollout has run.",
        labels=["rollout", "model"],
    )
    budget = GaugeMetricFamily(
        "edgeloop_rollout_wave_budget_seconds",
        "Seconds a wave should need at most: its bake time plus the offline timeout.",
        labels=["rollout", "model"],
    )
    now = datetime.now(timezone.utc)
    running = session.exec(select(Rollout).where(Rollout.state == RolloutState.RUNNING)).all()
    for r in running:
        started = r.wave_started_at or r.created_at
        started = started if started.tzinfo else started.replace(tzinfo=timezone.utc)
        labels = [str(r.id), r.model]
        age.add_metric(labels, (now - started).total_seconds())
        budget.add_metric(labels, r.bake_s + r.offline_timeout_s)
    yield age
    yield budget


def _job_durations(session: Session) -> SummaryMetricFamily:
    """Run time of finished jobs by kind (sum and count: rate them for a mean)."""
    fam = SummaryMetricFamily("edgeloop_job_duration_seconds", "Run time of finished jobs by kind.", labels=["kind"])
    rows = session.exec(
        select(Job.kind, Job.started_at, Job.finished_at).where(
            col(Job.started_at).is_not(None), col(Job.finished_at).is_not(None)
        )
    ).all()
    sums: dict[str, list[float]] = {}
    for kind, started, finished in rows:
        acc = sums.setdefault(str(kind), [0, 0.0])
        acc[0] += 1
        acc[1] += max(0.0, (finished - started).total_seconds())
    for kind, (n, total) in sorted(sums.items()):
        fam.add_metric([kind], count_value=int(n), sum_value=total)
    return fam


DRIFT_EVERY_S = 60.0  # a drift reading reads a window of telemetry points: once a minute, not every scrape
_drift_cache: dict[tuple[str, int, float], tuple[float, dict[str, Any] | None]] = {}


def _drift_reading(session: Session, model: str, version: int, window_min: float) -> dict[str, Any] | None:
    key, now = (model, version, window_min), time.monotonic()
    hit = _drift_cache.get(key)
    if hit is None or now - hit[0] > DRIFT_EVERY_S:
        hit = (now, confidence_drift(session, model, version, window_min))
        _drift_cache[key] = hit
    return hit[1]


def _drift(session: Session) -> Iterator[GaugeMetricFamily]:
    """Per retrain policy that watches drift: the serving version's confidence, recent over baseline, and the
    drop that fires it."""
    ratio = GaugeMetricFamily(
        "edgeloop_drift_confidence_ratio",
        "Mean prediction confidence over the drift window, relative to before it (1 = no drift).",
        labels=["model", "version"],
    )
    threshold = GaugeMetricFamily(
        "edgeloop_drift_threshold_ratio", "The ratio below which the retrain policy fires.", labels=["model"]
    )
    for pol in session.exec(select(RetrainPolicy).where(col(RetrainPolicy.drift_drop).is_not(None))).all():
        threshold.add_metric([pol.model], 1.0 - float(pol.drift_drop or 0.0))
        current = latest_trained(session, pol.model)
        if current is None:
            continue
        reading = _drift_reading(session, current.model, current.version, pol.drift_window_min)
        if reading is not None:
            ratio.add_metric([pol.model, str(current.version)], float(reading["ratio"]))
    yield ratio
    yield threshold


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
