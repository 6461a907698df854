"""The bridge's telemetry buffer on a real SQLite database: points coalesce per device between commits, sums
fold exactly, only changed columns are written, and a status that came after the buffered points wins."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlmodel import Session, select

from edge_agent.protocol.messages import Telemetry
from fleet_server.db import make_engine, migrate
from fleet_server.devices.tables import Device, TelemetryPoint
from fleet_server.devices.telemetry_rows import History, TelemetryBuffer, load
from fleet_server.rollouts.tables import TelemetryAgg


def _point(device: str, fps: float, source_ok: bool = True) -> Telemetry:
    return Telemetry(device_id=device, model="m", version=1, fps=fps, frames=10, latency_ms_p95=5.0,
                     source_ok=source_ok)  # fmt: skip


def test_points_coalesce_per_device_and_a_later_status_is_not_undone(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    migrate(engine)
    with Session(engine) as s:
        s.add(Device(id="a", token_hash="x", online=True, problem="old problem"))
        s.add(Device(id="b", token_hash="y", online=False))
        s.commit()
    buf, now = TelemetryBuffer(every_s=60), datetime.now(timezone.utc)
    with Session(engine) as s:
        buf.rows.update(load(s, ["a", "b", "ghost"]))
    assert set(buf.rows) == {"a", "b"}
    for seq, fps in enumerate((10.0, 20.0, 30.0)):  # three points of a: the newest wins, the sums take all
        assert buf.add("a", seq, _point("a", fps), now, online=True)
    assert buf.add("b", 3, _point("b", 7.0, source_ok=False), now, online=True)
    assert not buf.add("ghost", 4, _point("ghost", 1.0), now, online=True)
    assert not buf.due()
    with Session(engine) as s:
        n = buf.write(s, History(0.0, 24.0), status_seq={"b": 5})  # b went offline after its point
        s.commit()
    assert n == 2
    with Session(engine) as s:
        a, b = s.get(Device, "a"), s.get(Device, "b")
        assert a is not None and b is not None
        assert (
            a.fps == 30.0 and a.online and a.problem is None and a.telemetry_json and '"fps":30.0' in a.telemetry_json
        )
        assert not b.online and b.problem == "camera down"  # its point was read, its 'online' was not the word
        agg = s.get(TelemetryAgg, ("a", "m", 1))
        assert agg is not None and agg.n == 3 and abs(agg.fps_sum - 60.0) < 1e-9
        assert len(s.exec(select(TelemetryPoint)).all()) == 2  # one history point per device per write
