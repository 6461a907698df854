"""Rollout rules that need no running fleet: wave sizes, selectors, gates, and devices without an artifact
for their hardware class. Real SQLite database, real service code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from edge_agent.protocol.messages import Capabilities
from fleet_server.audit import AuditLog
from fleet_server.db import make_engine, migrate
from fleet_server.devices.deploy import Deployer
from fleet_server.devices.tables import Deployment, Device
from fleet_server.keys import ensure_keys
from fleet_server.registry.tables import Artifact, Model, ModelVersion
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.gates import GateError, parse_gate
from fleet_server.rollouts.selectors import SelectorError, parse_selector, parse_tags
from fleet_server.rollouts.service import RolloutCreate, RolloutError, create_rollout, wave_sizes
from fleet_server.rollouts.tables import Rollout, RolloutDevice


@pytest.mark.parametrize(
    "canary, waves, total, sizes",
    [
        ("1", ["100%"], 1, [1]),
        ("5", ["10%", "50%", "100%"], 100, [5, 10, 50, 100]),
        ("2%", ["50%"], 10, [1, 5, 10]),  # shares round up; the last wave always covers everyone
        ("20", ["10%"], 10, [10]),  # a canary larger than the fleet is the fleet
    ],
)
def test_wave_sizes(canary: str, waves: list[str], total: int, sizes: list[int]) -> None:
    assert wave_sizes(canary, waves, total) == sizes


def test_selectors_and_tags() -> None:
    sel = parse_selector("site=berlin,camera!=lobby")
    assert sel.matches("a", {"site": "berlin", "camera": "dock"})
    assert not sel.matches("a", {"site": "berlin", "camera": "lobby"})
    assert not sel.matches("a", {"site": "paris"})
    assert parse_selector("device=a|b").matches("b", {}) and not parse_selector("device=a|b").matches("c", {})
    assert parse_selector("all").matches("x", {})
    for bad in ("", "site", "site==x", "=x"):
        with pytest.raises(SelectorError):
            parse_selector(bad)
    with pytest.raises(SelectorError, match="reserved"):
        parse_tags(["device=x"])


@pytest.mark.parametrize(
    "text, new, base, ok",
    [
        ("fps>=0.9x", {"fps": 27.5}, {"fps": 30.0}, True),
        ("fps>=0.9x", {"fps": 18.0}, {"fps": 30.0}, False),  # 40% slower
        ("p95<=1.2x", {"p95": 13.0}, {"p95": 10.0}, False),
        ("agreement>=0.9", {"agreement": 0.95}, None, True),
        ("fps>=0.9x", {"fps": 5.0}, None, True),  # no baseline: not gated, said so
        ("fps>=0.9x", {}, {"fps": 30.0}, False),  # nothing measured on the new version
    ],
)
def test_gates(text: str, new: dict, base: dict | None, ok: bool) -> None:
    passed, why = parse_gate(text).check(new, base)
    assert passed is ok, why


def test_gate_errors() -> None:
    for bad in ("speed>=1", "fps>0.9", "agreement>=0.9x", "fps>=x"):
        with pytest.raises(GateError):
            parse_gate(bad)


def test_devices_without_a_fitting_artifact_are_listed_and_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)
    gpu = Capabilities(agent_version="0.1.0", gpu="NVIDIA A2", providers=["CUDAExecutionProvider"]).model_dump_json()
    with Session(engine) as s:
        s.add(Model(name="det", task="detect"))
        mv = ModelVersion(
            model="det",
            version=1,
            task="detect",
            decoder="yolov8",
            classes_json='["a"]',
            input_shape="[1,3,64,64]",
            signed_manifest="{}",
        )
        s.add(mv)
        s.flush()
        s.add(Artifact(version_id=int(mv.id or 0), target="onnx-fp16", sha256="a" * 64, length=1))  # GPU only
        s.add(Device(id="cpu-1", token_hash="x", tags_json='{"site": "x"}'))
        s.add(Device(id="gpu-1", token_hash="y", tags_json='{"site": "x"}', capabilities_json=gpu))
        s.commit()
        req = RolloutCreate(model="det", version=1, selector="site=x", gates=[])
        with pytest.raises(RolloutError) as err:
            create_rollout(s, req, "admin")
        assert err.value.detail == ["cpu-1"] and "no artifact" in str(err.value)
        assert s.exec(select(Rollout)).all() == []  # nothing created
        r, _ = create_rollout(s, req.model_copy(update={"skip_incompatible": True}), "admin")
        rows = s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)).all()
        assert [d.device_id for d in rows] == ["gpu-1"]
        assert json.loads(r.waves_json) == [1]


class _Died(Exception):
    """Stands in for a replica killed mid-step: the step stops there, with what it committed so far."""


class _Publisher:
    def __init__(self, dies: bool = False) -> None:
        self.dies, self.published = dies, []  # type: list[str]

    def publish_desired(self, session: Session, device_id: str, cache: dict | None = None) -> None:
        if self.dies:
            raise _Died
        self.published.append(device_id)


class _DiesBeforeDeploying(Deployer):
    def deploy_many(self, session: Session, items: list, actor: str) -> dict[str, str]:
        raise _Died


@pytest.mark.parametrize("cut", ["after taking the devices", "after recording their desired state"])
def test_a_wave_start_cut_short_deploys_each_device_once_when_resumed(tmp_path: Path, cut: str) -> None:
    """A replica killed inside a wave's start leaves its devices 'deploying' in a wave not marked started. The
    next step (here or on another replica) deploys what was not deployed, publishes what was deployed but
    perhaps never published, and adds no second revision to any device."""
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)
    with Session(engine) as s:
        s.add(Model(name="det", task="detect"))
        for v in (1, 2):
            mv = ModelVersion(model="det", version=v, task="detect", decoder="yolov8", classes_json='["a"]',
                              input_shape="[1,3,64,64]", signed_manifest=f"m{v}")  # fmt: skip
            s.add(mv)
            s.flush()
            s.add(Artifact(version_id=int(mv.id or 0), target="onnx-fp32", sha256=f"{v}" * 64, length=1))
        for i in range(4):
            s.add(Device(id=f"d{i}", token_hash=f"h{i}", tags_json='{"site": "x"}'))
        s.commit()
        r, _ = create_rollout(s, RolloutCreate(model="det", version=2, selector="site=x", canary="2", gates=[]), "a")
        rid = int(r.id or 0)
    keys = ensure_keys(tmp_path)
    if cut == "after taking the devices":
        dying = _DiesBeforeDeploying(keys, _Publisher(), 10.0)
    else:
        dying = Deployer(keys, _Publisher(dies=True), 10.0)
    with pytest.raises(_Died):
        RolloutEngine(engine, dying, name="a").advance(rid)
    with Session(engine) as s:
        canary = s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rid, RolloutDevice.wave == 0)).all()
        assert {d.state for d in canary} == {"deploying"} and s.get(Rollout, rid).wave_started_at is None  # type: ignore[union-attr]
        before = len(s.exec(select(Deployment)).all())
    assert before == (0 if cut == "after taking the devices" else 2)

    publisher = _Publisher()
    RolloutEngine(engine, Deployer(keys, publisher, 10.0), name="b").advance(rid)
    with Session(engine) as s:
        deps = s.exec(select(Deployment)).all()
        started = s.exec(select(AuditLog).where(AuditLog.action == "wave_started")).all()
        assert s.get(Rollout, rid).wave_started_at is not None  # type: ignore[union-attr]
    ids = sorted(d.device_id for d in canary)
    assert sorted(d.device_id for d in deps) == ids  # one revision each, whichever way the start was cut
    assert sorted(publisher.published) == ids  # and each device is told
    assert len(started) == 1
