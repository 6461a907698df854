"""Every table of the server, imported in one place so that `SQLModel.metadata` knows them all
(Alembic's env.py and the schema tests import this)."""

from __future__ import annotations

from fleet_server.audit import AuditLog
from fleet_server.devices.tables import Deployment, Device, TelemetryPoint
from fleet_server.flywheel.tables import RetrainPolicy, Sample
from fleet_server.jobs.tables import Job
from fleet_server.registry.tables import Artifact, Model, ModelVersion
from fleet_server.rollouts.tables import Rollout, RolloutDevice, TelemetryAgg
from fleet_server.users.tables import User, UserSession
from fleet_server.webhooks.tables import Webhook, WebhookDelivery

__all__ = [
    "Artifact",
    "AuditLog",
    "Deployment",
    "Device",
    "Job",
    "Model",
    "ModelVersion",
    "RetrainPolicy",
    "Rollout",
    "RolloutDevice",
    "Sample",
    "TelemetryAgg",
    "TelemetryPoint",
    "User",
    "UserSession",
    "Webhook",
    "WebhookDelivery",
]
