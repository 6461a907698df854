"""Loading a model on the agent: a model whose input or outputs do not match its manifest is refused
at load with a clear reason (and, in the update machine, the old model keeps serving)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.protocol.manifest import ArtifactEntry, InputSpec
from edge_agent.update.download import sha256_file
from edge_agent.update.machine import StepFailed
from tests.factories import Keys, signed
from tests.helpers import BIN


def _agent(tmp_path: Path) -> Agent:
    cfg = AgentConfig.load(
        None,
        {
            "device_id": "d",
            "server_url": "http://127.0.0.1:9",
            "mqtt_url": "mqtt://127.0.0.1:9",
            "token": "t",
            "root_public_key": Keys().root_public,
            "sources": ["0"],
            "data_dir": str(tmp_path),
        },
    )
    return Agent(cfg)


def _job(model: Path, **over: object) -> dict:
    entry = ArtifactEntry(url="/x", sha256=sha256_file(model), length=model.stat().st_size)
    env = signed(Keys(), 1, artifacts={"onnx-fp32": entry}, **over)
    return {"path": str(model), "sha256": entry.sha256, "target": "onnx-fp32", "manifest": env.model_dump(mode="json")}


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"input": InputSpec(shape=(1, 3, 32, 32))}, "differs from manifest (1, 3, 32, 32)"),
        ({"classes": ("a", "b", "c", "d")}, "decoder classify"),
    ],
)
def test_mismatched_model_is_refused_at_load(
    tmp_path: Path, assets: dict[str, Path], over: dict, fragment: str
) -> None:
    agent = _agent(tmp_path)
    with pytest.raises(StepFailed, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        agent.installer.warm(_job(assets["model_v1"], **over))
    assert agent.loop.model is None


def test_matching_model_loads_warm(tmp_path: Path, assets: dict[str, Path]) -> None:
    agent = _agent(tmp_path)
    agent.installer.warm(_job(assets["model_v1"]))
    assert agent.installer.candidate is not None and agent.installer.candidate.health.errors == 0


def test_bench_command_reports_ratios_from_one_run(assets: dict[str, Path]) -> None:
    r = subprocess.run(
        [
            str(BIN / "edgeloop-agent"),
            "--log-level",
            "WARNING",
            "bench",
            "--model",
            str(assets["model_v1"]),
            "--source",
            str(assets["video"]),
            "--seconds",
            "0.5",
            "--sweep",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["loop_fps"] > 0 and out["raw_fps"] > 0 and out["naive_fps"] > 0
    assert out["loop_over_raw"] == pytest.approx(out["loop_fps"] / out["raw_fps"], rel=0.02, abs=0.002)
    assert out["loop_over_naive"] == pytest.approx(out["loop_fps"] / out["naive_fps"], rel=0.02, abs=0.002)
    assert set(out["raw_fps_by_setting"]) >= {"threads=1,spin=0", "threads=1,spin=1"}
    sweep = out["loop_fps_by_setting"]  # the loop's own best setting was found in the real loop and used
    assert set(sweep) >= {"threads=1,spin=0", "threads=1,spin=1"} and all(v > 0 for v in sweep.values())
    best = max(sweep, key=sweep.__getitem__)
    ls = out["loop_setting"]
    assert best == f"threads={ls['intra_threads']},spin={int(ls['allow_spinning'])}"
    assert out["staleness_ms_p99"] >= out["staleness_ms_p50"] > 0
    bad = subprocess.run(
        [str(BIN / "edgeloop-agent"), "bench", "--model", "/nonexistent.onnx", "--source", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_a_tensorrt_device_builds_its_engine_in_prepare_and_says_so(
    tmp_path: Path, assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake runtime stands in for TensorRT (no GPU or TensorRT here). What is checked is the agent's part: on
    a TensorRT device the engine is built in the prepare step, before the model is needed, from the explicit
    (Q/DQ) artifact with no calibration cache, and the reported state says what is happening meanwhile."""
    import onnx

    import edge_agent.update.installer as installer_mod
    from edge_agent.runtimes.base import TRT_QUANT_KEY

    model = onnx.load(str(assets["model_v1"]))
    entry = model.metadata_props.add()
    entry.key, entry.value = TRT_QUANT_KEY, "explicit"
    path = tmp_path / "tensorrt.onnx"
    onnx.save(model, str(path))
    from edge_agent.runtimes import RuntimeOptions

    opened: list[tuple[str, RuntimeOptions | None]] = []

    class FakeEngine:
        input_shape = (1, 3, 64, 64)

        def close(self) -> None:
            opened.append(("closed", None))

    def fake_create(name: str, p: Path, options: RuntimeOptions) -> FakeEngine:
        opened.append((name, options))
        return FakeEngine()

    monkeypatch.setattr(installer_mod, "create_runtime", fake_create)
    agent = _agent(tmp_path)
    said: list[str | None] = []
    inst = installer_mod.Installer(
        agent.cfg, agent.caps, "tensorrt", agent.loop, agent.trust, agent._stop, lambda: said.append(inst.detail)
    )
    job = _job(path)
    job["candidates"] = {"tensorrt": {"path": str(path), "sha256": job["sha256"]}}
    inst.prepare(job)
    (_, options), closed = opened[0], opened[1]
    assert closed == ("closed", None) and options is not None
    assert options.precision == "int8" and options.int8_explicit is True and options.int8_calibration is None
    assert said[0] is not None and said[0].startswith("building the TensorRT engine for") and said[-1] is None
    # a CPU device builds nothing there
    opened.clear()
    installer_mod.Installer(agent.cfg, agent.caps, "cpu", agent.loop, agent.trust, agent._stop, lambda: None).prepare(
        job
    )
    assert opened == []
