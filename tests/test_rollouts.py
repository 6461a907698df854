"""Staged rollouts against a real server, broker and the fleet simulator. If these fail, a slower model
reaches the whole fleet, a server restart strands a rollout, or an offline device blocks one forever."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Server, deploy_all, wait_for
from tools.fleet_sim import FleetSim

pytestmark = pytest.mark.e2e
FAST = {"EDGELOOP_ROLLOUT_TICK_S": "0.2"}


@pytest.fixture()
def fleet(tmp_path: Path, mosquitto: str, assets: dict[str, Path]) -> Iterator[Server]:
    s = Server(tmp_path / "server", mosquitto, env=FAST)
    for m in ("model_v1", "model_v2", "model_v3"):
        s.push(assets[m])
    yield s
    s.stop()


def _sim(fleet: Server, mosquitto: str, n: int, prefix: str, **kw: object) -> FleetSim:
    sim = FleetSim(fleet.url, fleet.token, mosquitto, n, prefix, telemetry_interval_s=0.2, **kw)  # type: ignore[arg-type]
    sim.enroll({"site": "berlin"})
    return sim.start()


def _rollout(fleet: Server, **body: object) -> dict:
    r = fleet.http.post("/api/v1/rollouts", json={"model": "colors", "selector": "site=berlin", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _wait_state(fleet: Server, rid: int, states: tuple[str, ...], timeout: float = 60) -> dict:
    return wait_for(
        lambda: (r := fleet.http.get(f"/api/v1/rollouts/{rid}").json())["state"] in states and r,
        timeout,
        f"rollout {rid} in {states}",
    )


def test_canary_on_a_slower_version_aborts_and_rolls_back(fleet: Server, mosquitto: str) -> None:
    sim = _sim(fleet, mosquitto, 10, "slow", slow={2: 1.4})
    try:
        deploy_all(fleet, sim, 1)
        r = _rollout(
            fleet,
            version=2,
            canary="2",
            waves=["50%", "100%"],
            bake_s=1.0,
            gates=["fps>=0.9x", "p95<=1.2x"],
            max_failure=0.0,
        )
        done = _wait_state(fleet, r["id"], ("aborted", "completed"))
        assert done["state"] == "aborted", done
        assert "canary" in done["reason"] and "fps" in done["reason"]
        canaries = [d["id"] for d in done["devices"] if d["wave"] == 0]
        assert len(canaries) == 2 and all(d["state"] == "rolled_back" for d in done["devices"] if d["wave"] == 0)
        assert all(d["state"] == "pending" for d in done["devices"] if d["wave"] > 0)
        wait_for(lambda: all(v == 1 for v in sim.versions().values()), 20, "every device back on v1")
        assert all(sim.devices[c].installs == [1, 2, 1] for c in canaries)  # moved, then sent back
        assert all(sim.devices[d].installs == [1] for d in sim.devices if d not in canaries)  # never moved
        actions = [a["action"] for a in fleet.http.get(f"/api/v1/rollouts/{r['id']}").json()["audit"]]
        assert actions[0] == "created" and actions[-1] == "aborted"
        # the status bars never read as success: the canary's is all sent-back marks, the rest still to come
        bars = [ln for ln in fleet.cli("rollout", "status", str(r["id"])).stdout.splitlines() if "[" in ln]
        assert "[" + "x" * 20 + "]" in bars[0] and "#" not in "".join(bars) and "[" + "." * 20 + "]" in bars[1]
    finally:
        sim.stop()


def test_rollout_survives_a_server_kill_and_completes(fleet: Server, mosquitto: str, tmp_path: Path) -> None:
    sim = _sim(fleet, mosquitto, 8, "rst")
    try:
        deploy_all(fleet, sim, 1)
        r = _rollout(fleet, version=3, canary="2", waves=["50%", "100%"], bake_s=1.0)
        wait_for(lambda: fleet.http.get(f"/api/v1/rollouts/{r['id']}").json()["wave"] >= 1, 60, "canary passed")
        os.kill(fleet.proc.p.pid, signal.SIGKILL)  # no graceful shutdown
        fleet.proc.p.wait(10)
        port = fleet.port
        fleet.http.close()
        restarted = Server(fleet.data_dir, mosquitto, env=FAST, port=port)
        fleet.proc, fleet.http = restarted.proc, restarted.http
        done = _wait_state(fleet, r["id"], ("completed", "aborted"))
        assert done["state"] == "completed", done
        assert all(d["state"] == "active" for d in done["devices"])
        wait_for(lambda: all(v == 3 for v in sim.versions().values()), 20, "fleet on v3")
        assert all(sim.devices[d].installs == [1, 3] for d in sim.devices)  # each device moved exactly once
        out = fleet.cli("rollout", "status", str(r["id"]), "--audit").stdout
        assert "COMPLETED" in out and "wave_passed" in out
    finally:
        sim.stop()


def test_offline_device_times_out_as_not_updated_then_converges(fleet: Server, mosquitto: str) -> None:
    sim = _sim(fleet, mosquitto, 4, "off")
    try:
        deploy_all(fleet, sim, 1)
        gone = sorted(sim.devices)[0]
        sim.set_online(gone, False)
        wait_for(lambda: not fleet.device(gone)["online"], 10, "device offline")
        r = _rollout(fleet, version=3, canary="100%", waves=[], bake_s=0.5, offline_timeout_s=2.0)
        done = _wait_state(fleet, r["id"], ("completed", "aborted"))
        assert done["state"] == "completed", done
        states = {d["id"]: d["state"] for d in done["devices"]}
        assert states[gone] == "not_updated" and all(s == "active" for d, s in states.items() if d != gone)
        sim.set_online(gone, True)  # desired state waits for it: it converges when it returns
        wait_for(lambda: sim.versions()[gone] == 3, 20, "returning device converges")
    finally:
        sim.stop()


def test_bad_rollouts_are_refused_before_anything_is_created(fleet: Server, mosquitto: str) -> None:
    sim = _sim(fleet, mosquitto, 2, "bad")
    try:
        for body, status, fragment in [
            ({"selector": "site=nowhere", "version": 2}, 422, "matches no device"),
            ({"selector": "site berlin", "version": 2}, 422, "cannot read selector"),
            ({"version": 2, "gates": ["speed>=2"]}, 422, "cannot read gate"),
            ({"version": 9}, 404, "no model version"),
            ({"version": 2, "canary": "0"}, 422, "count"),
        ]:
            r = fleet.http.post("/api/v1/rollouts", json={"model": "colors", "selector": "site=berlin", **body})
            assert r.status_code == status and fragment in r.json()["detail"], r.text
        assert fleet.http.get("/api/v1/rollouts").json() == []
        # a newer rollout supersedes the active one on the same devices, with a clear message
        first = _rollout(fleet, version=2, bake_s=3600)
        out = fleet.cli("rollout", "create", "colors:3", "--selector", "site=berlin", "--bake", "1h")
        assert f"rollout {first['id']} superseded" in out.stdout
        assert fleet.http.get(f"/api/v1/rollouts/{first['id']}").json()["state"] == "superseded"
    finally:
        sim.stop()


def test_pause_resume_promote_and_rollback_from_the_cli(fleet: Server, mosquitto: str) -> None:
    sim = _sim(fleet, mosquitto, 3, "ops")
    try:
        deploy_all(fleet, sim, 1)
        out = fleet.cli(
            "rollout",
            "create",
            "colors:2",
            "--selector",
            "site=berlin",
            "--canary",
            "1",
            "--waves",
            "100%",
            "--bake",
            "1h",
            "--json",
        ).stdout
        rid = str(__import__("json").loads(out)["id"])

        def get() -> dict:
            return dict(fleet.http.get(f"/api/v1/rollouts/{rid}").json())

        wait_for(lambda: get()["waves"][0]["states"].get("active") == 1, 20, "canary active")
        fleet.cli("rollout", "pause", rid)
        assert get()["state"] == "paused"
        fleet.cli("rollout", "promote", rid)  # remembered, but a paused rollout does not move
        time.sleep(1.0)
        assert get()["wave"] == 0
        fleet.cli("rollout", "resume", rid)
        wait_for(lambda: get()["wave"] == 1, 20, "promoted past the canary's bake")
        wait_for(lambda: get()["waves"][1]["states"].get("active") == 2, 20, "wave 1 active")
        fleet.cli("rollout", "promote", rid)
        wait_for(lambda: get()["state"] == "completed", 20, "completed")
        assert all(v == 2 for v in sim.versions().values())
        fleet.cli("rollout", "rollback", rid)
        wait_for(lambda: get()["state"] == "aborted", 20, "rolled back")
        wait_for(lambda: all(v == 1 for v in sim.versions().values()), 20, "fleet back on v1")
        actions = [a["action"] for a in get()["audit"]]
        for a in ("pause", "promote", "resume", "completed", "rollback", "aborted"):
            assert a in actions, actions
        assert bad_action(fleet, rid).status_code == 409  # cannot pause an aborted rollout
    finally:
        sim.stop()


def bad_action(fleet: Server, rid: str):  # type: ignore[no-untyped-def]
    return fleet.http.post(f"/api/v1/rollouts/{rid}/pause")


def test_shadow_canary_gates_on_agreement_before_anything_is_activated(fleet: Server, mosquitto: str) -> None:
    """With --shadow the canary runs the candidate beside the old model; a candidate that disagrees never
    serves a single frame anywhere, one that agrees is then activated wave by wave."""
    sim = _sim(fleet, mosquitto, 4, "shd", agreement={2: 0.6, 3: 1.0})
    try:
        deploy_all(fleet, sim, 1)
        bad = _rollout(
            fleet,
            version=2,
            canary="2",
            waves=["100%"],
            bake_s=1.0,
            shadow=True,
            gates=["agreement>=0.9"],
            max_failure=0.0,
        )
        done = _wait_state(fleet, bad["id"], ("aborted", "completed"))
        assert done["state"] == "aborted" and "agreement 0.6" in done["reason"], done
        wait_for(lambda: all(sim.devices[d].shadow_version is None for d in sim.devices), 20, "shadow removed")
        assert all(2 not in sim.devices[d].installs for d in sim.devices)  # v2 never active anywhere

        good = _rollout(
            fleet, version=3, canary="2", waves=["100%"], bake_s=0.5, shadow=True, gates=["agreement>=0.9", "fps>=0.8x"]
        )
        done = _wait_state(fleet, good["id"], ("aborted", "completed"))
        assert done["state"] == "completed", (done["reason"], done["devices"])
        wait_for(lambda: all(v == 3 for v in sim.versions().values()), 20, "fleet on v3")
    finally:
        sim.stop()
