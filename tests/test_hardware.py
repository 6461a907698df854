"""Honest hardware detection: a device is reported as what it can run, not what a library lists.

No GPU, TensorRT or Jetson exists on the CI machine. These tests read recorded outputs instead
(tests/data/hardware/: `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version
--format=csv,noheader,nounits` recorded on an H200, the same for a two-T4 box, nvidia-smi without a driver, and the
`/etc/nv_tegra_release` and device-tree model files of a JetPack 6 Orin and a JetPack 5 Xavier NX, in the
formats those releases write). If these fail, a CPU box that has onnxruntime-gpu installed is sent
TensorRT artifacts and asks for TensorRT on every model load, or a Jetson is treated as a CPU box.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_agent import capabilities
from edge_agent.camera.sources import csi_pipeline
from edge_agent.config import AgentConfig
from edge_agent.hardware import GpuInfo, gpu_info, parse_jetson, parse_nvidia_smi, tensorrt_version, usable_providers
from edge_agent.protocol.messages import BoardTelemetry, Capabilities
from edge_agent.tegrastats import parse as parse_tegrastats

DATA = Path(__file__).parent / "data" / "hardware"
ORT_GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
H200 = GpuInfo("NVIDIA H200", 143771, "9.0", "580.159.04")  # recorded on a lent H200


@pytest.mark.parametrize(
    "recorded, expected",
    [
        ("nvidia-smi-no-driver.txt", None),
        ("nvidia-smi-h200.csv", H200),
        ("nvidia-smi-2xt4.csv", GpuInfo("Tesla T4", 15360, "7.5", "535.183.01")),  # the first GPU
    ],
)
def test_nvidia_smi_readings(recorded: str, expected: GpuInfo | None) -> None:
    assert parse_nvidia_smi((DATA / recorded).read_text()) == expected
    assert parse_nvidia_smi("") is None


@pytest.mark.parametrize(
    "board, name, l4t, jetpack",
    [
        ("orin", "NVIDIA Jetson AGX Orin Developer Kit", "36.3.0", "6.0"),
        ("xavier", "NVIDIA Jetson Xavier NX Developer Kit", "35.4.1", "5.1.2"),
    ],
)
def test_a_jetson_is_recognised_without_nvidia_smi(
    tmp_path: Path, board: str, name: str, l4t: str, jetpack: str
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    shutil.copy(DATA / f"{board}-nv_tegra_release", tmp_path / "etc" / "nv_tegra_release")
    shutil.copy(DATA / f"{board}-dt-model", tmp_path / "proc" / "device-tree" / "model")
    info = gpu_info(str(tmp_path))
    assert info == GpuInfo(name, jetson_l4t=l4t, jetpack=jetpack)
    assert parse_jetson("not a tegra release file", None) is None


@pytest.mark.parametrize(
    "gpu, trt, usable",
    [
        (None, None, ["CPUExecutionProvider"]),  # onnxruntime-gpu on a box without a GPU
        (H200, None, ["CUDAExecutionProvider", "CPUExecutionProvider"]),  # lists TensorRT, cannot load it
        (H200, "10.3.0", ORT_GPU),
        (None, "10.3.0", ["CPUExecutionProvider"]),  # TensorRT's library without a GPU runs nothing
    ],
)
def test_only_providers_that_can_load_are_used(gpu: GpuInfo | None, trt: str | None, usable: list[str]) -> None:
    assert usable_providers(ORT_GPU, gpu, trt) == usable


@pytest.mark.parametrize(
    "gpu, providers, trt, kind",
    [
        (None, ["CPUExecutionProvider"], None, "cpu"),
        (None, ["CUDAExecutionProvider", "CPUExecutionProvider"], None, "cpu"),  # a GPU build without a GPU
        ("NVIDIA A2", ["CUDAExecutionProvider", "CPUExecutionProvider"], None, "cuda"),
        ("NVIDIA H200", ORT_GPU, None, "cuda"),  # TensorRT listed by onnxruntime-gpu but its library absent
        ("Orin", ["CPUExecutionProvider"], "10.3.0", "tensorrt"),
    ],
)
def test_device_kind(gpu: str | None, providers: list[str], trt: str | None, kind: str) -> None:
    caps = Capabilities(agent_version="0.1.0", providers=providers, gpu=gpu, tensorrt=trt)
    assert capabilities.device_kind(caps) == kind


def test_this_machine_reports_what_it_can_run() -> None:
    """The CI machine: onnxruntime on the CPU, no TensorRT library, so a CPU device whatever is installed."""
    caps = capabilities.detect()
    assert "onnxruntime" in caps.runtimes and "CPUExecutionProvider" in caps.providers
    if caps.gpu is None:
        assert not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(caps.providers)
        assert capabilities.device_kind(caps) == "cpu"
    if tensorrt_version() is None:
        assert "TensorrtExecutionProvider" not in caps.providers and caps.tensorrt is None


@pytest.mark.parametrize(
    "recorded, gpu, power_in, hottest, cpu",
    [
        ("tegrastats-orin.txt", 41.0, 7012.0, ("cpu", 45.5), 1.0),  # JetPack 6: rails in mW, GPU with frequency
        ("tegrastats-xavier.txt", 0.0, 3875.0, ("pmic", 50.0), 7.2),  # JetPack 5: bare rails, two cores off
    ],
)
def test_tegrastats_lines_become_board_telemetry(
    recorded: str, gpu: float, power_in: float, hottest: tuple[str, float], cpu: float
) -> None:
    """A Jetson's power, thermal and GPU load, from tegrastats lines in the formats JetPack 5 and 6 print."""
    reading = parse_tegrastats((DATA / recorded).read_text())
    assert reading is not None
    assert reading["gpu_load_pct"] == gpu and reading["power_in_mw"] == power_in
    assert max(reading["temp_c"].items(), key=lambda kv: kv[1]) == hottest
    assert reading["cpu_load_pct"] == cpu and reading["ram_total_mb"] > reading["ram_used_mb"] > 0
    BoardTelemetry(**reading)  # what the agent sends validates as the protocol's message
    assert parse_tegrastats("some other line") is None


def test_a_csi_camera_becomes_an_argus_pipeline() -> None:
    """Jetson CSI cameras: the pipeline string cannot run here (no Argus); its text is what matters."""
    p = csi_pipeline("csi://1?width=1920&height=1080&fps=60&flip=2")
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=1920, height=1080")
    assert (
        "framerate=60/1" in p
        and "nvvidconv flip-method=2" in p
        and p.endswith("appsink drop=true max-buffers=1 sync=false")
    )
    assert "width=1280, height=720, framerate=30/1" in csi_pipeline("csi://0")
    for bad, why in (("csi://x", "sensor id"), ("csi://0?zoom=2", "unknown parameter"), ("csi://0?fps=999", "fps")):
        with pytest.raises(ValueError, match=why):
            csi_pipeline(bad)


def test_an_agent_config_refuses_twin_camera_names_and_bad_csi_settings() -> None:
    base = {
        "device_id": "cam-1",
        "server_url": "http://s",
        "mqtt_url": "mqtt://s",
        "token": "t",
        "root_public_key": "k",
    }
    with pytest.raises(ValueError, match="two cameras are named dock"):
        AgentConfig(**base, sources=[{"uri": "a.mp4", "name": "dock"}, {"uri": "b.mp4", "name": "dock"}])
    with pytest.raises(ValueError, match="fps must be"):
        AgentConfig(**base, sources=[{"uri": "csi://0?fps=0"}])
    ok = AgentConfig(**base, sources=[{"uri": "csi://0?fps=30"}, {"uri": "b.mp4"}])
    assert len(ok.sources) == 2
