"""Two server replicas against one PostgreSQL and one Mosquitto: device traffic is split through $share
subscriptions and counted exactly once, and a rollout is advanced by only one replica at a time. If this
fails, scaling out the server double-counts telemetry or double-deploys devices."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from fleet_server.audit import AuditLog
from fleet_server.db import make_engine
from fleet_server.devices.tables import Deployment
from fleet_server.registry.tables import ModelVersion
from fleet_server.rollouts.tables import TelemetryAgg
from tests.helpers import Server, wait_for
from tests.pg import PostgresServer
from tools.fleet_sim import FleetSim

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_two_replicas_split_traffic_and_advance_a_rollout_once(
    tmp_path: Path, mosquitto: str, postgres: PostgresServer, assets: dict[str, Path]
) -> None:
    db = postgres.create_database(f"edgeloop_replicas_{uuid.uuid4().hex[:8]}")
    data = tmp_path / "shared-data"  # the replicas share keys, admin token and artifact store
    env = {"EDGELOOP_ROLLOUT_TICK_S": "0.1"}
    a = Server(data, mosquitto, extra=["--database-url", db], env=env)
    b = Server(data, mosquitto, extra=["--database-url", db], env=env)
    sim = None
    try:
        a.push(assets["model_v1"])
        b.push(assets["model_v3"])  # colors:2, registered through the other replica
        sim = FleetSim(a.url, a.token, mosquitto, 12, "rep", telemetry_interval_s=0.1)
        sim.enroll({"site": "hall"})
        sim.start()
        for d in sim.devices:
            b.http.put(f"/api/v1/devices/{d}/deployment", json={"model": "colors", "version": 1}).raise_for_status()
        wait_for(lambda: all(v == 1 for v in sim.versions().values()), 20, "fleet on v1")
        wait_for(lambda: sum(sim.telemetry_sent.values()) > 200, 20, "telemetry flowing")
        sim.pause_telemetry()
        time.sleep(0.5)  # the batch already under way is sent
        engine = make_engine(db)

        def counted() -> int:
            with Session(engine) as s:
                return int(s.exec(select(func.sum(TelemetryAgg.n))).one() or 0)

        sent = sum(sim.telemetry_sent.values())
        wait_for(lambda: counted() == sent, 15, f"{sent} telemetry messages counted once")
        assert "re-published desired" in a.proc.log() and "re-published desired" in b.proc.log()

        r = a.http.post(
            "/api/v1/rollouts",
            json={
                "model": "colors",
                "version": 2,
                "selector": "site=hall",
                "canary": "3",
                "waves": ["100%"],
                "bake_s": 0,
                "gates": [],
            },
        )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        done = wait_for(
            lambda: (x := b.http.get(f"/api/v1/rollouts/{rid}").json())["state"] == "completed" and x,
            180,  # waves wait for devices and bake; slow under a loaded 2-core CI run
            "rollout completed",
        )
        assert all(d["state"] == "active" for d in done["devices"])
        assert all(sim.devices[d].installs == [1, 2] for d in sim.devices), {
            d: x.installs for d, x in sim.devices.items()
        }
        with Session(engine) as s:
            v2 = s.exec(select(ModelVersion.id).where(ModelVersion.version == 2)).one()
            per_device = s.exec(
                select(Deployment.device_id, func.count())
                .where(Deployment.version_id == v2)
                .group_by(Deployment.device_id)
            ).all()
            starts = s.exec(
                select(func.count())
                .select_from(AuditLog)
                .where(AuditLog.action == "wave_started", AuditLog.target == f"rollout/{rid}")
            ).one()
        assert len(per_device) == 12 and all(n == 1 for _, n in per_device)
        assert starts == 2  # canary and one wave, each started by exactly one replica
    finally:
        if sim:
            sim.stop()
        a.stop()
        b.stop()


def test_a_scene_sent_to_one_replica_is_a_near_duplicate_on_the_other(
    tmp_path: Path, mosquitto: str, postgres: PostgresServer
) -> None:
    """Two devices behind a load balancer see the same scene: whichever replica gets the second copy must
    know about the first (the dedup index catches up from the database before every lookup)."""
    import json

    import cv2
    import httpx
    import numpy as np

    db = postgres.create_database(f"edgeloop_dedup_{uuid.uuid4().hex[:8]}")
    data = tmp_path / "shared-data"
    a = Server(data, mosquitto, extra=["--database-url", db])
    b = Server(data, mosquitto, extra=["--database-url", db])
    try:
        devs = {d: a.enroll(d) for d in ("dup-1", "dup-2")}

        def send(server: Server, device: str, seed: int, brighten: int = 0) -> dict:
            img = np.random.default_rng(seed).integers(0, 200, (96, 128, 3), dtype=np.uint8) + brighten
            r = httpx.post(
                f"{server.url}/api/v1/devices/{device}/samples",
                headers={"Authorization": f"Bearer {devs[device]['token']}"},
                files={"image": ("x.jpg", cv2.imencode(".jpg", img.astype(np.uint8))[1].tobytes(), "image/jpeg")},
                data={"meta": json.dumps({"strategy": "random"})},
            )
            assert r.status_code in (200, 201), r.text
            return dict(r.json())

        assert send(b, "dup-2", seed=7)["stored"]  # replica b has looked at its index once already
        first = send(a, "dup-1", seed=1)
        assert first["stored"]
        again = send(b, "dup-2", seed=1, brighten=3)  # the same scene, other bytes, other device, other replica
        assert again["stored"] is False and f"of sample {first['id']}" in again["duplicate"]
    finally:
        a.stop()
        b.stop()
