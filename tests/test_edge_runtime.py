"""Edge runtime behaviour a device owner feels: several cameras on one model, a model that is right but
too slow rolled back by the health window, and a candidate scored in shadow beside the active model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Server, start_agent, wait_for

pytestmark = pytest.mark.e2e


def test_two_cameras_slow_model_rollback_and_shadow(tmp_path: Path, mosquitto: str, assets: dict[str, Path]) -> None:
    fleet = Server(tmp_path / "server", mosquitto)
    agent = None
    try:
        fleet.push(assets["model_v1"])
        fleet.push(assets["model_slow"])  # colors:2: same answers, ~10x slower than the camera
        fleet.push(assets["model_v3"])
        enrolled = fleet.enroll("cam-multi")
        agent = start_agent(tmp_path, enrolled, [str(assets["video"]), str(assets["video"])])
        fleet.cli("deploy", "colors:1", "--device", "cam-multi", "--health-window", "0.5")
        fleet.wait_serving("cam-multi", 1)

        # both cameras are served by the one model, each with its own figures
        dev = wait_for(
            lambda: (
                (d := fleet.device("cam-multi"))["sources"]
                and all(s["infer_fps"] > 5 and s["decode_fps"] > 5 for s in d["sources"])
                and d
            ),
            20,
            "per-camera telemetry",
        )
        assert [s["name"] for s in dev["sources"]] == ["cam0", "cam1"]
        assert dev["fps"] > 40  # two 30 fps cameras

        # a model that answers right but cannot keep up: the health window sees the fps drop and rolls back
        fleet.cli("deploy", "colors:2", "--device", "cam-multi", "--health-window", "3")
        dev = wait_for(lambda: (d := fleet.device("cam-multi"))["state"] == "failed" and d, 40, "slow model refused")
        assert "fps is below 0.5" in dev["reason"], dev["reason"]
        assert dev["version"] == 1
        fleet.wait_serving("cam-multi", 1, state="failed")

        # back to colors:1 (a signed rollback: colors:2 was deployed) with colors:3 in shadow on half the frames
        out = fleet.cli("deploy", "colors:1", "--device", "cam-multi", "--shadow", "colors:3", "--shadow-share", "0.5")
        assert "signed rollback" in out.stdout
        dev = wait_for(
            lambda: (d := fleet.device("cam-multi"))["shadow"] and d["shadow"]["frames"] >= 20 and d,
            30,
            "shadow agreement reported",
        )
        assert dev["state"] == "committed" and dev["version"] == 1 and dev["shadow_version"] == 3
        assert dev["shadow"]["version"] == 3 and dev["shadow"]["agreement"] >= 0.9  # same labels, other weights

        # shadow removed by the next deployment without one
        fleet.cli("deploy", "colors:1", "--device", "cam-multi")
        wait_for(lambda: fleet.device("cam-multi")["shadow_version"] is None, 20, "shadow stopped")
    finally:
        if agent:
            agent.stop()
        fleet.stop()
