"""What the fleet page counts as "with a problem", from a device's own telemetry and state. If these fail, a
device whose camera is gone or whose fps collapsed looks healthy, or a healthy one is flagged."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from edge_agent.protocol.messages import SourceTelemetry, Telemetry, UpdateStateName
from fleet_server.devices import problems
from fleet_server.devices.tables import Device


def _tel(fps: float, **kw: object) -> Telemetry:
    return Telemetry(device_id="d", model="m", version=1, frames=100, fps=fps, **kw)  # type: ignore[arg-type]


def test_fps_under_half_its_usual_is_a_problem_and_the_usual_does_not_chase_the_drop() -> None:
    d = Device(id="d", token_hash="x", online=True, last_seen=datetime.now(timezone.utc))
    for _ in range(50):
        problems.from_telemetry(d, _tel(30.0))
    assert d.problem is None and abs((d.fps_baseline or 0) - 30.0) < 0.01
    for _ in range(100):  # a long slump: still flagged, the usual stays where it was
        problems.from_telemetry(d, _tel(9.0))
    assert d.problem == "9.0 fps, under half its usual 30.0" and abs((d.fps_baseline or 0) - 30.0) < 0.01
    assert problems.describe(d) == d.problem
    problems.from_telemetry(d, _tel(24.0))  # slower but not half: fine, and it moves the usual a little
    assert d.problem is None and 29.0 < (d.fps_baseline or 0) < 30.0


def test_a_camera_down_a_failed_update_and_silence_are_problems_offline_is_not() -> None:
    now = datetime.now(timezone.utc)
    d = Device(id="d", token_hash="x", online=True, last_seen=now)
    down = SourceTelemetry(name="door", ok=False, error="connection timed out")
    problems.from_telemetry(d, _tel(0.0, source_ok=False, sources=[down, SourceTelemetry(name="yard", ok=True)]))
    assert d.problem == "door down: connection timed out"
    problems.from_telemetry(d, _tel(30.0, sources=[SourceTelemetry(name="door", ok=True)]))
    assert d.problem is None and problems.describe(d, now) is None
    d.state, d.reason = UpdateStateName.failed, "sha256 mismatch"
    assert problems.describe(d, now) == "update failed: sha256 mismatch"
    d.state, d.reason = UpdateStateName.committed, None
    assert problems.describe(d, now + timedelta(seconds=90)) == "silent for 90 s"
    d.online = False  # counted as offline, not as a problem
    assert problems.describe(d, now + timedelta(seconds=90)) is None
