"""The device's rules for which target to serve after timing them (edge_agent/update/measure.py). If these
fail, a device serves a target slower than fp32 on its own hardware, or one whose timing failed."""

from __future__ import annotations

import itertools

import pytest

from edge_agent.hardware import cpu_model, hardware_key
from edge_agent.update.measure import Timing, choose, time_runs


def _t(target: str, p50: float | None = None, error: str | None = None) -> Timing:
    return Timing(target, p50_ms=p50, p99_ms=p50, runs=10 if p50 else 0, error=error)


@pytest.mark.parametrize(
    ("timings", "chosen", "why"),
    [
        ([], "onnx-int8", "nothing measured"),
        ([_t("onnx-int8", 3.0)], "onnx-int8", "the only target"),
        ([_t("onnx-int8", 2.0), _t("onnx-fp32", 4.0)], "onnx-int8", "2.00x fp32 here (p50 2.00 vs 4.00 ms), -0.50 pts"),
        ([_t("onnx-int8", 5.0), _t("onnx-fp32", 4.0)], "onnx-fp32", "onnx-int8 5.00 ms: not faster than fp32 here"),
        ([_t("onnx-int8", 4.0), _t("onnx-fp32", 4.0)], "onnx-int8", "1.00x fp32 here"),  # a tie is not slower
        ([_t("onnx-int8", error="load: bad"), _t("onnx-fp32", 4.0)], "onnx-fp32", "measurement failed (onnx-int8"),
        ([_t("onnx-int8", 1.0), _t("onnx-fp32", error="timed out: 2 run(s)")], "onnx-int8", "serving onnx-int8"),
        ([_t("onnx-fp16", 1.0), _t("onnx-int8", 3.0)], "onnx-fp16", "fastest here: p50 1.00 ms"),
    ],
)
def test_choice_rules(timings: list[Timing], chosen: str, why: str) -> None:
    got = choose(timings, {"onnx-int8": -0.5}, fallback="onnx-int8")
    assert got.target == chosen
    assert why in got.reason


def test_timing_stops_at_its_budget_and_reports_a_timeout_or_an_error() -> None:
    """A fake clock: each run takes 10 ms, so a 0.5 s budget holds about 50 runs and a 30 ms budget too few."""
    ticks = itertools.count()
    clock = lambda: next(ticks) * 0.005  # noqa: E731 - two reads per run: 10 ms a run
    t = time_runs(lambda: None, 0.5, "onnx-fp32", clock)
    assert t.error is None and 45 <= t.runs <= 55 and t.p50_ms == pytest.approx(5.0)
    t = time_runs(lambda: None, 0.03, "onnx-fp32", clock)
    assert t.error is not None and t.error.startswith("timed out") and t.p50_ms is None

    def boom() -> None:
        raise RuntimeError("CUDA out of memory\nmore")

    t = time_runs(boom, 1.0, "onnx-fp16")
    assert t.error == "RuntimeError: CUDA out of memory"


@pytest.mark.parametrize(
    ("cpuinfo", "model"),
    [
        ("", None),
        ("processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n", "AMD EPYC 7B13 64-Core Processor"),
        (
            "processor\t: 0\nCPU part\t: 0xd42\nModel\t: NVIDIA Jetson AGX Orin Developer Kit\n",
            "NVIDIA Jetson AGX Orin Developer Kit",
        ),
    ],
)
def test_hardware_key_names_the_processor_and_engines(cpuinfo: str, model: str | None) -> None:
    assert cpu_model(cpuinfo) == model
    assert (
        hardware_key("NVIDIA H200", model, "1.31.1", "10.3.0") == "NVIDIA H200 | onnxruntime 1.31.1 | TensorRT 10.3.0"
    )
    assert hardware_key(None, model, "1.31.1", None) == f"{model or 'unknown processor'} | onnxruntime 1.31.1"
