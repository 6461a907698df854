"""One table of artifact targets (like Ultralytics' `export_formats()`): what each target is, which device
classes run it, its precision, and the function that builds it. Everything else (measurement, accuracy,
the recommendation) is the same for every row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_zoo.compile import quantize


@dataclass
class BuildContext:
    """What a target's build function may use: the FP32 graph, its pre-processed copy (shape inference
    done, for quantization), a work folder, the calibration reader (made on first use) and the options."""

    fp32: Path
    pre: Path
    work: Path
    calibration: str
    trt_int8: str  # explicit | cache
    reduce_range: bool
    reader: Callable[[], quantize.CalibReader]
    exclude: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fp16(ctx: BuildContext, out: Path) -> None:
    quantize.build_fp16(ctx.fp32, out)


def _int8(ctx: BuildContext, out: Path) -> None:
    quantize.build_int8(ctx.pre, out, ctx.reader(), ctx.calibration, ctx.reduce_range, ctx.exclude)


def _tensorrt(ctx: BuildContext, out: Path) -> None:
    if ctx.trt_int8 == "cache":
        cache = quantize.trt_calibration_cache(ctx.pre, ctx.reader(), ctx.work, ctx.calibration)
        quantize.build_tensorrt_cache(ctx.fp32, out, cache)
        ctx.notes.append(f"FP32 graph + INT8 calibration cache ({ctx.calibration}); the device builds its engine")
    else:
        quantize.build_int8(ctx.pre, out, ctx.reader(), ctx.calibration, False, ctx.exclude, for_tensorrt=True)
        ctx.notes.append(
            f"explicit quantization: symmetric int8 Q/DQ ({ctx.calibration}); the device builds its engine"
        )


@dataclass(frozen=True)
class TargetInfo:
    name: str
    description: str
    device_classes: tuple[str, ...]
    precision: str
    build: Callable[[BuildContext, Path], Any] | None  # None: the exported FP32 graph itself


TARGETS: dict[str, TargetInfo] = {
    t.name: t
    for t in (
        TargetInfo("onnx-fp32", "ONNX, float32: the reference", ("cpu", "cuda", "tensorrt"), "fp32", None),
        TargetInfo(
            "onnx-int8", "ONNX QDQ int8, per-channel weights, calibrated on the dataset", ("cpu",), "int8", _int8
        ),
        TargetInfo("onnx-fp16", "ONNX float16 weights and math, float32 I/O", ("cuda", "tensorrt"), "fp16", _fp16),
        TargetInfo(
            "tensorrt",
            "ONNX for TensorRT's INT8: Q/DQ (explicit) or a calibration cache; the engine is built on the device",
            ("tensorrt",),
            "int8",
            _tensorrt,
        ),
    )
}
DEFAULT_TARGETS = ("onnx-fp32", "onnx-int8", "onnx-fp16", "tensorrt")
TRT_INT8_MODES = ("explicit", "cache")
