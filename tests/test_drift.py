"""The drift signal behind retrain policies, on a real (SQLite) database with the server's migrations.
If these fail, a fleet whose confidence collapses never retrains, or a noisy hour retrains for nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlmodel import Session

from fleet_server.db import make_engine, migrate
from fleet_server.devices.tables import TelemetryPoint
from fleet_server.flywheel.drift import confidence_drift, retrain_trigger

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def _points(session: Session, minutes_ago: range, conf: float, version: int = 3, per_point: int = 5) -> None:
    for m in minutes_ago:
        session.add(
            TelemetryPoint(
                device_id=f"cam-{m % 4}",
                at=NOW - timedelta(minutes=m),
                model="dock",
                version=version,
                confidences=json.dumps([conf] * per_point),
            )
        )
    session.commit()


@pytest.fixture()
def session(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_no_signal_until_both_sides_have_enough_predictions(session: Session) -> None:
    assert confidence_drift(session, "dock", 3, 60, NOW) is None  # empty
    _points(session, range(61, 70), 0.9)  # 45 predictions before the window: too few
    _points(session, range(0, 30), 0.5)
    assert confidence_drift(session, "dock", 3, 60, NOW) is None


def test_a_confidence_drop_in_the_window_is_measured_against_the_time_before(session: Session) -> None:
    _points(session, range(61, 181), 0.8)
    _points(session, range(0, 60), 0.5)
    _points(session, range(0, 60), 0.99, version=2)  # another version's telemetry does not count
    d = confidence_drift(session, "dock", 3, 60, NOW)
    assert d is not None and d["baseline"] == pytest.approx(0.8) and d["recent"] == pytest.approx(0.5)
    assert d["ratio"] == pytest.approx(0.625) and d["recent_n"] == 300 and d["baseline_n"] == 600


@pytest.mark.parametrize(
    ("labels", "minimum", "drop", "ratio", "fires"),
    [
        (0, 50, 0.2, 0.5, None),  # a drift with nothing labelled has nothing to teach
        (10, 50, None, 0.5, None),  # no drift trigger configured
        (10, 50, 0.2, 0.9, None),  # a 10 % dip is under a 20 % threshold
        (10, 50, 0.2, None, None),  # not enough telemetry to tell
        (10, 50, 0.2, 0.7, "drift: mean confidence"),
        (50, 50, None, None, "50 new labels"),
    ],
)
def test_retrain_trigger_table(
    labels: int, minimum: int, drop: float | None, ratio: float | None, fires: str | None
) -> None:
    drift = None if ratio is None else {"recent": 0.8 * ratio, "baseline": 0.8, "ratio": ratio}
    why = retrain_trigger(labels, minimum, drop, drift)
    assert (why is None) if fires is None else (why is not None and why.startswith(fires))
