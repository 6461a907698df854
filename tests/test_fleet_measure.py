"""The fleet measures what it runs: a real agent times a version's targets on its own hardware, serves the
fastest that is not slower than fp32 there, and reports the timings through a real Mosquitto to a real
server, which keeps them per hardware key, shows them (API, CLI, console in Chromium) and starts later
versions of the same model from the measured choice. If this fails, a device serves whatever the build
host's rule says, and a rule can ship a slower model (fp16 ran slower than fp32 on an H200's CUDA provider).

Versions with several targets are registered the way the compile job registers them
(`register_artifacts`), with real ONNX files whose speed is known: the colour classifier (fast) and the same
classifier with a heavy branch (at least 120 ms a run here).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session

from edge_agent.protocol.manifest import ArtifactEntry, DecoderSpec, InputSpec
from edge_agent.update.download import sha256_file
from fleet_server.db import make_engine
from fleet_server.keys import ensure_keys
from fleet_server.registry.service import register_artifacts
from fleet_server.storage import LocalStore
from model_zoo.builders.color_classifier import build_color_classifier
from tests.helpers import Server, start_agent, wait_for

pytestmark = pytest.mark.e2e
SPEC = InputSpec(shape=(1, 3, 64, 64))


def register(server: Server, targets: dict[str, Path], deltas: dict[str, float] | None = None) -> int:
    """A new version of `colors` with these targets (as a compile job registers one); its number."""
    store = LocalStore(server.data_dir / "artifacts")
    arts = {}
    for t, path in targets.items():
        sha = sha256_file(path)
        store.add_copy(path, sha)
        arts[t] = ArtifactEntry(
            url=f"/api/v1/artifacts/{sha}",
            sha256=sha,
            length=path.stat().st_size,
            measured_on="cpu",
            accuracy_delta=(deltas or {}).get(t, 0.0),
        )
    with Session(make_engine(f"sqlite:///{server.data_dir / 'edgeloop.db'}")) as s:
        mv = register_artifacts(
            s, ensure_keys(server.data_dir), "colors", "classify", ["red", "green", "blue"], SPEC,
            DecoderSpec(type="classify"), arts, 30, lineage={"job": "test"},
        )  # fmt: skip
        s.commit()
        return mv.version


@pytest.fixture()
def fleet(tmp_path: Path, mosquitto: str) -> Iterator[Server]:
    s = Server(tmp_path / "server", mosquitto)
    yield s
    s.stop()


def _serving(server: Server, device: str, version: int, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (d := server.device(device))["version"] == version and d["state"] == "committed" and d["target"] and d,
        timeout,
        f"{device} committed on v{version}",
    )


def test_a_device_times_each_target_and_serves_the_fastest_here(
    fleet: Server, assets: dict[str, Path], tmp_path: Path, mosquitto: str, browser: Any
) -> None:
    fast, slow = assets["model_v1"], assets["model_slow"]
    small = build_color_classifier(tmp_path / "small.onnx", size=32)  # loads, but not with the manifest's input
    enrolled = fleet.enroll("cam-m")
    agent = start_agent(tmp_path, enrolled, str(assets["video"]), config={"measure_budget_s": 3.0})
    try:
        wait_for(lambda: fleet.device("cam-m")["online"], 20, "agent online")

        # v1: int8 (the CPU rule's first pick) is the slow one here: the device serves fp32 and says why
        v1 = register(fleet, {"onnx-fp32": fast, "onnx-int8": slow}, {"onnx-int8": -0.3})
        fleet.cli("deploy", f"colors:{v1}", "--device", "cam-m", "--health-window", "0.5")
        d = _serving(fleet, "cam-m", v1)
        assert d["target"] == "onnx-fp32", d
        assert "not faster than fp32 here" in d["target_reason"], d["target_reason"]
        rows = {
            r["target"]: r for r in fleet.http.get(f"/api/v1/models/colors/versions/{v1}").json()["fleet_measurements"]
        }
        assert set(rows) == {"onnx-fp32", "onnx-int8"}
        assert rows["onnx-fp32"]["chosen_by"] == 1 and rows["onnx-int8"]["chosen_by"] == 0
        assert rows["onnx-int8"]["p50_ms"] > 5 * rows["onnx-fp32"]["p50_ms"]
        hardware = rows["onnx-fp32"]["hardware"]
        assert "onnxruntime" in hardware and rows["onnx-fp32"]["devices"] == 1
        # only the served target stays on the device's disk
        on_disk = sorted(p.name for p in (tmp_path / "agent-data" / "models" / "colors" / str(v1)).iterdir())
        assert on_disk == ["onnx-fp32.onnx"]

        # v2: the other way round: int8 is fast, and is served
        v2 = register(fleet, {"onnx-fp32": slow, "onnx-int8": fast}, {"onnx-int8": -0.4})
        # (asked to measure: without a budget it would start from v1's choice for this hardware, as v3 does below)
        fleet.cli(
            "deploy",
            f"colors:{v2}",
            "--device",
            "cam-m",
            "--health-window",
            "0.5",
            "--min-fps-ratio",
            "0",
            "--measure-budget",
            "3",
        )
        d = _serving(fleet, "cam-m", v2)
        assert d["target"] == "onnx-int8", d
        assert re.search(r"x fp32 here .*-0\.40 pts on the build host", d["target_reason"]), d["target_reason"]
        shown = fleet.cli("models", "show", f"colors:{v2}").stdout
        assert "measured by the fleet" in shown and hardware[:40] in shown
        line = next(ln for ln in shown.splitlines() if "onnx-int8" in ln and "device(s)" in ln)
        assert "1 device(s)" in line

        # v3, the same model: the desired state carries v2's choice for this hardware; the device is not timed
        v3 = register(fleet, {"onnx-fp32": slow, "onnx-int8": fast})
        fleet.cli("deploy", f"colors:{v3}", "--device", "cam-m", "--health-window", "0.5", "--min-fps-ratio", "0")
        d = _serving(fleet, "cam-m", v3)
        assert d["target"] == "onnx-int8"
        assert f"measured best on this hardware with colors:{v2}" in d["target_reason"], d["target_reason"]
        assert fleet.http.get(f"/api/v1/models/colors/versions/{v3}").json()["fleet_measurements"] == []

        # v4 with a measure budget asked for: int8 cannot even load here, so fp32 serves, and the reason says so
        v4 = register(fleet, {"onnx-fp32": fast, "onnx-int8": small})
        fleet.cli("deploy", f"colors:{v4}", "--device", "cam-m", "--health-window", "0.5", "--measure-budget", "3")
        d = _serving(fleet, "cam-m", v4)
        assert d["target"] == "onnx-fp32"
        assert "measurement failed (onnx-int8: load: model input" in d["target_reason"], d["target_reason"]
        rows = {
            r["target"]: r for r in fleet.http.get(f"/api/v1/models/colors/versions/{v4}").json()["fleet_measurements"]
        }
        assert rows["onnx-int8"]["failed"] == 1 and rows["onnx-fp32"]["chosen_by"] == 1

        # hostile reports on the device's topic: a version it was never sent, a target the version lacks,
        # absurd figures. Each is refused with one log line, however often it is re-sent; nothing is kept.
        v5 = register(fleet, {"onnx-fp32": fast, "onnx-int8": fast})
        base = {"schema": 1, "device_id": "cam-m", "revision": 99}

        def report(version: int, timings: list[dict[str, Any]], chosen: str = "onnx-fp32") -> bytes:
            measured = {"model": "colors", "version": version, "hardware_key": "forged", "timings": timings,
                        "chosen": chosen, "reason": "forged"}  # fmt: skip
            slot = {"model": "colors", "version": v4, "state": "committed", "target": chosen, "measured": measured}
            return json.dumps({**base, "slots": {"default": slot}}).encode()

        ok_row = {"target": "onnx-fp32", "p50_ms": 1.0, "p99_ms": 2.0, "runs": 10}
        forged = [
            report(v5, [ok_row]),  # never sent to cam-m
            report(v4, [{**ok_row, "target": "tensorrt"}], "tensorrt"),  # not a target of v4
            report(v4, [{**ok_row, "p50_ms": -3.0}]),
            report(v4, [{**ok_row, "p50_ms": 1e9}]),
        ]
        host, port = mosquitto.split("://")[1].split(":")
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        c.connect(host, int(port))
        c.loop_start()

        def refusals() -> int:
            return fleet.proc.log().count("refused the target measurement of cam-m")

        nan = report(v4, [ok_row]).replace(b'"p50_ms": 1.0', b'"p50_ms": NaN')
        # one at a time (several reports of a device in one batch: only the newest is looked at)
        for n, p in enumerate([*forged, nan], start=1):
            c.publish("edgeloop/v1/devices/cam-m/reported", p, qos=1).wait_for_publish(5)
            wait_for(lambda n=n: refusals() >= n, 15, f"refusal {n}")
        for p in [*forged, nan]:  # sent again, at once
            c.publish("edgeloop/v1/devices/cam-m/reported", p, qos=1).wait_for_publish(5)
        time.sleep(1.0)
        log = fleet.proc.log()
        assert log.count("refused the target measurement of cam-m") == 5, log[-3000:]
        for why in ("was never sent to this device", "has no target 'tensorrt'", "-3.0 is not a latency",
                    "1000000000.0 is not a latency", "nan is not a latency"):  # fmt: skip
            assert why in log
        c.loop_stop()
        c.disconnect()
        rows = fleet.http.get(f"/api/v1/models/colors/versions/{v4}").json()["fleet_measurements"]
        assert all(r["hardware"] == hardware for r in rows)
        assert fleet.http.get(f"/api/v1/models/colors/versions/{v5}").json()["fleet_measurements"] == []
        assert agent.alive()

        # the console's model page shows the fleet's table
        r = fleet.http.post("/api/v1/users", json={"name": "mia", "role": "viewer", "password": "Viewer-pass-22"})
        assert r.status_code == 201, r.text
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(f"{fleet.url}/console/login")
        page.fill("input[name=name]", "mia")
        page.fill("input[name=password]", "Viewer-pass-22")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/console/fleet$"))
        page.goto(f"{fleet.url}/console/models/colors/{v2}")
        assert page.title() == f"colors:{v2} · edgeloop"
        table = page.locator("#fleet-measurements")
        text = table.text_content() or ""
        assert hardware[:30] in text and "onnx-int8" in text and "1 device(s)" in text
        page.goto(f"{fleet.url}/console/devices/cam-m")
        assert (page.locator("#serving-target").text_content() or "").strip().endswith("onnx-fp32")
        out = Path("test-output") / "console"
        out.mkdir(parents=True, exist_ok=True)
        page.goto(f"{fleet.url}/console/models/colors/{v4}")
        page.screenshot(path=str(out / "fleet-measurements.png"), full_page=True)
    finally:
        agent.stop()
