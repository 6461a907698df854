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
    # the cache is TensorRT's own text format: onnxruntime must be told, or it reads it as its flatbuffer table
    assert po["trt_int8_use_native_calibration_table"] == "True"
    assert OnnxRuntime._provider_options("CPUExecutionProvider", opts) == {}
    # explicit quantization: the Q/DQ nodes carry the scales, so no table is named at all
    explicit = opts.model_copy(update={"int8_explicit": True, "int8_calibration": None})
    po = OnnxRuntime._provider_options("TensorrtExecutionProvider", explicit)
    assert po["trt_int8_enable"] == "True" and po["trt_fp16_enable"] == "True"
    assert "trt_int8_calibration_table_name" not in po and "trt_int8_use_native_calibration_table" not in po


class FakeTensorRT:
    """A stand-in for the `tensorrt` module (TensorRT cannot be installed on these machines, and needs a GPU):
    it records what the runtime's engine build asks of TensorRT 10's builder API, nothing more."""

    class BuilderFlag:
        FP16, INT8 = "FP16", "INT8"

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    class IInt8MinMaxCalibrator(IInt8EntropyCalibrator2):
        pass

    class _Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.int8_calibrator: object | None = None

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def create_timing_cache(self, data: bytes) -> bytes:
            return data

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> None:
            pass

        def get_timing_cache(self) -> object:
            return type("T", (), {"serialize": lambda self: b"timing"})()

    class Builder:
        last_config: FakeTensorRT._Config | None = None

        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> object:
            return object()

        def create_builder_config(self) -> FakeTensorRT._Config:
            FakeTensorRT.Builder.last_config = FakeTensorRT._Config()
            return FakeTensorRT.Builder.last_config

        def build_serialized_network(self, network: object, config: object) -> bytes:
            return b"engine"

    class OnnxParser:
        def __init__(self, network: object, logger: object) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            return True


@pytest.mark.parametrize(
    ("explicit", "cache_head", "flags", "calibrator"),
    [
        (True, None, {"FP16", "INT8"}, None),
        (False, "TRT-8600-MinMaxCalibration", {"FP16", "INT8"}, "IInt8MinMaxCalibrator"),
        (False, "TRT-8600-EntropyCalibration2", {"FP16", "INT8"}, "IInt8EntropyCalibrator2"),
    ],
)
def test_native_tensorrt_builds_int8_explicitly_or_from_the_cache_with_its_algorithm(
    tmp_path: Path, explicit: bool, cache_head: str | None, flags: set[str], calibrator: str | None
) -> None:
    """Against FakeTensorRT (no GPU or TensorRT here): an explicit (Q/DQ) model gets INT8 with no calibrator,
    as TensorRT 10 expects; a cache gets a calibrator of the algorithm its header names."""
    from edge_agent.runtimes.tensorrt_rt import TensorRTRuntime

    cache = None
    if cache_head:
        cache = tmp_path / "m.calib"
        cache.write_text(f"{cache_head}\nimages: 3c010204\n")
    rt = TensorRTRuntime.__new__(TensorRTRuntime)
    rt._trt, rt._logger = FakeTensorRT, object()
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    opts = RuntimeOptions(precision="int8", int8_explicit=explicit, int8_calibration=cache)
    assert rt._build(model, tmp_path / "timing.cache", opts) == b"engine"
    cfg = FakeTensorRT.Builder.last_config
    assert cfg is not None and cfg.flags == flags
    if calibrator is None:
        assert cfg.int8_calibrator is None
    else:
        assert isinstance(cfg.int8_calibrator, getattr(FakeTensorRT, calibrator))
        assert cfg.int8_calibrator.read_calibration_cache() == (cache or Path()).read_bytes()
    with pytest.raises(RuntimeError_, match="needs Q/DQ nodes in the model or the calibration cache"):
        rt._build(model, tmp_path / "timing.cache", RuntimeOptions(precision="int8"))


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
