"""HTTP routes, one module per resource: thin handlers that parse, authorise, call a service, shape the reply."""

from __future__ import annotations

from fleet_server.api.routes import (
    artifacts,
    audit,
    datasets,
    devices,
    flywheel,
    jobs,
    models,
    rollouts,
    samples,
    users,
    webhooks,
)

ROUTERS = [
    devices.router,
    models.router,
    artifacts.router,
    rollouts.router,
    jobs.router,
    datasets.router,
    samples.router,
    flywheel.router,
    users.router,
    audit.router,
    webhooks.router,
]
