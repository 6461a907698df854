"""Several models on one box: each model slot has its own model, cameras and update state. On real parts
(Mosquitto, `edgeloop server` over HTTP, an `edgeloop-agent` process) and, for the agent's own refusals,
on an Agent built from its config (nothing connects: it is never started)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.protocol.messages import Deployment, DesiredState
from tests.factories import Keys, signed
from tests.helpers import Proc, Server, start_agent, wait_for

pytestmark = pytest.mark.e2e


def _slot(fleet: Server, device_id: str, name: str) -> dict[str, Any]:
    return next((s for s in fleet.device(device_id)["slots"] if s["slot"] == name), {})


def _serving(fleet: Server, device_id: str, name: str, model: str, version: int, state: str = "committed") -> dict:
    return wait_for(
        lambda: (
            (s := _slot(fleet, device_id, name)).get("model") == model
            and s["version"] == version
            and s["state"] == state
            and (s["fps"] or 0) > 0
            and s
        ),
        40,
        f"slot {name} serving {model}:{version} ({state}, fps > 0)",
    )


@pytest.fixture()
def fleet(tmp_path: Path, mosquitto: str) -> Iterator[Server]:
    s = Server(tmp_path / "server", mosquitto)
    yield s
    s.stop()


def _box(tmp_path: Path, fleet: Server, device_id: str, video: Path, cameras: tuple[str, str]) -> Proc:
    """An agent with two cameras of the same video: the first feeds the default slot, the second `dock`."""
    sources = [{"uri": str(video), "name": cameras[0]}, {"uri": str(video), "name": cameras[1], "slot": "dock"}]
    agent = start_agent(tmp_path, fleet.enroll(device_id), str(video), config={"sources": sources})
    wait_for(lambda: fleet.device(device_id)["online"], 20, "agent online")
    return agent


def test_two_slots_two_models_one_rolled_back_alone_and_cameras_reassigned(
    tmp_path: Path, fleet: Server, assets: dict[str, Path]
) -> None:
    fleet.push(assets["model_v1"])  # colors:1
    fleet.push(assets["model_slow"])  # colors:2: right, but far slower than the camera
    fleet.push(assets["model_v3"], name="tint")  # tint:1, a second model
    agent = _box(tmp_path, fleet, "box-1", assets["video"], ("gate", "dock"))
    try:
        fleet.cli("deploy", "colors:1", "--device", "box-1", "--health-window", "0.5")
        out = fleet.cli("deploy", "tint:1", "--device", "box-1", "--slot", "dock", "--health-window", "0.5")
        assert "in slot dock" in out.stdout
        main = _serving(fleet, "box-1", "default", "colors", 1)
        dock = _serving(fleet, "box-1", "dock", "tint", 1)
        assert main["sources"] == ["gate"] and dock["sources"] == ["dock"]
        assert list(dock["camera_fps"]) == ["dock"]
        assert [(c["name"], c["decoder"]) for c in fleet.device("box-1")["sources"]] == [("gate", "cpu")]  # no GPU
        dev = fleet.device("box-1")
        assert (dev["model"], dev["version"]) == ("colors", 1)  # the default slot, as before slots
        listed = fleet.cli("devices", "list").stdout
        assert "slot dock: tint:1 committed" in listed, listed

        # a slot the device does not have: refused by the server, naming both
        bad = fleet.cli("deploy", "tint:1", "--device", "box-1", "--slot", "yard", check=False)
        assert bad.returncode != 0 and "has no slot 'yard'" in bad.stderr and "default, dock" in bad.stderr

        # the default slot's update fails its health window and rolls back; the dock slot is not touched
        # (a ratio of 0.9: on a loaded machine the old model's own fps may be far under the camera's)
        fleet.cli("deploy", "colors:2", "--device", "box-1", "--health-window", "3", "--min-fps-ratio", "0.9")
        failed = wait_for(
            lambda: (s := _slot(fleet, "box-1", "default"))["state"] == "failed" and s, 60, "slow model rolled back"
        )
        assert "fps is below 0.9" in failed["reason"] and failed["version"] == 1 and failed["target_version"] == 2
        dock = _serving(fleet, "box-1", "dock", "tint", 1)
        assert dock["reason"] is None
        _serving(fleet, "box-1", "default", "colors", 1, state="failed")

        # the desired state moves the gate camera to the dock slot: one model now serves both
        fleet.cli("deploy", "tint:1", "--device", "box-1", "--slot", "dock", "--sources", "gate,dock")
        dock = wait_for(
            lambda: (s := _slot(fleet, "box-1", "dock"))["sources"] == ["gate", "dock"] and s, 20, "cameras moved"
        )
        assert _slot(fleet, "box-1", "default")["sources"] == []
        wait_for(
            lambda: all(f and f > 5 for f in _slot(fleet, "box-1", "dock")["camera_fps"].values()),
            20,
            "both cameras served by the dock slot",
        )
        assert agent.log().count("downloaded") == 3  # colors:1, colors:2, tint:1: the move downloads nothing
        page = fleet.http.get("/console/devices/box-1/live").text
        assert 'data-slot="dock"' in page and "tint:1" in page
    finally:
        agent.stop()


def test_a_slot_rollout_updates_that_slot_and_leaves_the_default_alone(
    tmp_path: Path, fleet: Server, assets: dict[str, Path]
) -> None:
    fleet.push(assets["model_v1"])  # colors:1
    fleet.push(assets["model_v1"], name="tint")  # tint:1
    fleet.push(assets["model_v3"], name="tint")  # tint:2
    agent = _box(tmp_path, fleet, "box-2", assets["video"], ("a", "b"))
    try:
        fleet.cli("deploy", "colors:1", "--device", "box-2", "--health-window", "0.5")
        fleet.cli("deploy", "tint:1", "--device", "box-2", "--slot", "dock", "--health-window", "0.5")
        _serving(fleet, "box-2", "dock", "tint", 1)
        _serving(fleet, "box-2", "default", "colors", 1)

        out = fleet.cli(
            "rollout", "create", "tint:2", "--selector", "all", "--slot", "dock", "--bake", "1s",
            "--gate", "fps>=0.3x", "--offline-timeout", "60s", "--json",
        )  # fmt: skip
        rid = json.loads(out.stdout)["id"]
        done = wait_for(
            lambda: (r := fleet.http.get(f"/api/v1/rollouts/{rid}").json())["state"] in ("completed", "aborted") and r,
            60,
            "slot rollout finished",
        )
        assert done["state"] == "completed", (done["reason"], done["devices"])
        assert done["devices"][0]["prev_version"] == 1  # the dock slot's version, not the default's
        _serving(fleet, "box-2", "dock", "tint", 2)
        dev = fleet.device("box-2")
        assert (dev["model"], dev["version"], dev["state"]) == ("colors", 1, "committed")
    finally:
        agent.stop()


def _agent(tmp_path: Path, keys: Keys, **over: Any) -> Agent:
    cfg = {
        "device_id": "box-3",
        "server_url": "http://127.0.0.1:9",
        "mqtt_url": "mqtt://127.0.0.1:9",
        "token": "t",
        "root_public_key": keys.root_public,
        "sources": [{"uri": "a.avi", "name": "a"}, {"uri": "b.avi", "name": "b", "slot": "dock"}],
        "data_dir": str(tmp_path / "data"),
        **over,
    }
    return Agent(AgentConfig.model_validate(cfg))


def test_the_agent_refuses_unknown_slots_and_cameras_naming_both(tmp_path: Path) -> None:
    keys = Keys()
    agent = _agent(tmp_path, keys)
    said: list[Any] = []
    agent._report = lambda: said.append(dict(agent._refused))  # type: ignore[method-assign]
    assert list(agent.slots) == ["default", "dock"] and agent.caps.slots == ["default", "dock"]
    assert [s.name for s in agent.slots["dock"].loop.sources] == ["b"]

    msg = DesiredState(
        device_id="box-3",
        revision=4,
        deployments=[
            Deployment(manifest=signed(keys, 1)),
            Deployment(slot="yard", manifest=signed(keys, 2)),
            Deployment(slot="dock", manifest=signed(keys, 3), sources=["a", "c"]),
        ],
    )
    agent._assign(msg)
    yard, dock = said[-1]["yard"], said[-1]["dock"]
    assert yard.state == "failed" and yard.reason == "slot 'yard' does not exist on this device (it has: default, dock)"
    assert yard.target_version == 2
    assert dock.reason == "slot 'dock': no camera named c (cameras: a, b)"
    assert [s.name for s in agent.slots["dock"].loop.sources] == ["b"]  # a refused assignment moves nothing

    ok = msg.model_copy(update={"deployments": [Deployment(slot="dock", manifest=signed(keys, 3), sources=["a"])]})
    agent._assign(ok)
    assert agent._refused == {}
    assert [s.name for s in agent.slots["dock"].loop.sources] == ["a", "b"]  # in config order
    assert agent.slots["default"].loop.sources == []


def test_slot_config_is_checked_at_load(tmp_path: Path) -> None:
    keys = Keys()
    with pytest.raises(ValueError, match="camera 'b' feeds slot 'dock', which is not one of slots: default, yard"):
        _agent(tmp_path, keys, slots=["default", "yard"])
    with pytest.raises(ValueError, match="two cameras are named a"):
        _agent(tmp_path, keys, sources=[{"uri": "x", "name": "a"}, {"uri": "y", "name": "a", "slot": "dock"}])
    agent = _agent(tmp_path, keys, slots=["dock", "default", "yard"])
    assert list(agent.slots) == ["default", "dock", "yard"]  # default first: mining and /preview watch it
    assert (tmp_path / "data" / "slots" / "yard" / "models").is_dir()
