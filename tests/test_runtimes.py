"""Runtime plugin selection and configuration. The GPU paths cannot run here (no GPU, no TensorRT on
the CI machine); these tests check what can be checked without one: the cache key that keeps engines
from being reused on the wrong GPU/TensorRT/precision, the provider options handed to onnxruntime, the
device kind that picks artifact targets, and a clear error when native TensorRT is asked for but absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.runtimes import RuntimeError_, RuntimeOptions, create_runtime
from edge_agent.runtimes.base import engine_cache_key
from edge_agent.runtimes.onnxruntime_rt import OnnxRuntime


def test_engine_cache_key_changes_with_every_part() -> None:
    base = engine_cache_key("a" * 64, "10.3.0", "NVIDIA Orin (nvgpu)", "int8")
    assert base == "aaaaaaaaaaaaaaaa-trt10.3.0-nvidia-orin--nvgpu-int8"
    for other in (
        engine_cache_key("b" * 64, "10.3.0", "NVIDIA Orin (nvgpu)", "int8"),
        engine_cache_key("a" * 64, "10.4.0", "NVIDIA Orin (nvgpu)", "int8"),
        engine_cache_key("a" * 64, "10.3.0", "NVIDIA A2", "int8"),
        engine_cache_key("a" * 64, "10.3.0", "NVIDIA Orin (nvgpu)", "fp16"),
    ):
        assert other != base
    assert "/" not in engine_cache_key("a" * 64, "10", "weird/../gpu", "fp16")


def test_tensorrt_provider_options_use_keyed_engine_and_timing_cache(tmp_path: Path) -> None:
    opts = RuntimeOptions(
        cache_dir=tmp_path, artifact_sha256="c" * 64, precision="int8", int8_calibration=tmp_path / "calib.cache"
    )
    po = OnnxRuntime._provider_options("TensorrtExecutionProvider", opts)
    assert po["trt_engine_cache_enable"] == "True" and po["trt_int8_enable"] == "True"
    assert Path(po["trt_engine_cache_path"]).name.startswith("cccccccccccccccc-trt")
    assert Path(po["trt_engine_cache_path"]).name.endswith("-int8")
    assert po["trt_timing_cache_path"] == str(tmp_path / "timing")
    assert po["trt_int8_calibration_table_name"] == str(tmp_path / "calib.cache")
    assert OnnxRuntime._provider_options("CPUExecutionProvider", opts) == {}


def test_native_tensorrt_absent_is_a_clear_error(assets: dict[str, Path]) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip(reason="TensorRT is installed: this checks the error on machines without TensorRT (no GPU)")
    except ImportError:
        pass
    with pytest.raises(RuntimeError_, match="native TensorRT needs tensorrt"):
        create_runtime("tensorrt", assets["model_v1"])


def test_unknown_runtime_and_bad_model(tmp_path: Path, assets: dict[str, Path]) -> None:
    with pytest.raises(RuntimeError_, match="unknown runtime"):
        create_runtime("openvino", assets["model_v1"])
    with pytest.raises(RuntimeError_, match="cannot load"):
        create_runtime("onnxruntime", assets["not_onnx"])
