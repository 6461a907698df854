"""INT8 for the CPU and for TensorRT, and fp16, from the exported FP32 graph.

- `onnx-int8`: QDQ, per-channel int8 weights, uint8 activations (what onnxruntime's CPU kernels run
  fastest), calibrated on the dataset's training split with the method the user chose.
- `tensorrt`, explicit quantization (the default): TensorRT 10 deprecates implicit INT8 calibrators
  (since 10.1), so the artifact is a QDQ graph in the form TensorRT reads: symmetric int8 activations and
  weights, per-channel weights, zero points 0. The device builds its engine from the Q/DQ scales alone.
- `tensorrt`, calibration cache (`--trt-int8 cache`, for TensorRT before 8.6 and old JetPacks): the FP32
  graph with TensorRT's calibration cache in its metadata, the scales computed with the chosen method.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.preprocess import Preprocessor
from edge_agent.runtimes.base import TRT_CALIB_KEY, TRT_QUANT_KEY
from model_zoo.datasets.store import DatasetVersion

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class CompileError(ValueError):
    """The compile cannot proceed; str() says what to give or fix."""


class CalibReader:
    """Feeds quantize_static the agent's own preprocessing of dataset images (train split, never val)."""

    def __init__(self, dv: DatasetVersion, input_spec: Any, count: int, seed: int = 0) -> None:
        pool = dv.split("train") or []
        if not pool:
            raise CompileError(
                "onnx-int8 needs calibration images: give a dataset version with training samples "
                "(edgeloop compile … --dataset NAME[:VERSION]; its train split is sampled) or leave onnx-int8 "
                "out of --targets"
            )
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
        pre = Preprocessor(input_spec, kernel="numpy")
        self.batches = [pre(dv.load_image(pool[int(i)]))[0].copy() for i in pick]
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {"images": x}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name.lower() not in methods:
        raise CompileError(f"calibration method must be one of {', '.join(methods)}, got {name!r}")
    return methods[name.lower()]


def graph_nodes(path: Path) -> tuple[list[str], list[str]]:
    """(compute nodes in order, the decode tail after the last one).

    The tail (sigmoid, box arithmetic, the concat of boxes with scores) is cheap and must stay float: one
    8-bit scale cannot hold pixel coordinates and 0-1 scores at once.
    """
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    compute = [i for i, n in enumerate(nodes) if n.op_type in ("Conv", "Gemm", "MatMul")]
    last = compute[-1] if compute else -1
    return [nodes[i].name for i in compute], [n.name for n in nodes[last + 1 :]]


def build_int8(
    pre_path: Path,
    out: Path,
    reader: CalibReader,
    method: str,
    reduce_range: bool,
    exclude: list[str],
    for_tensorrt: bool = False,
) -> None:
    """A QDQ graph. For TensorRT: int8 activations, symmetric scales (zero points 0), one Q/DQ pair per
    consumer, never reduce_range: the form its ONNX parser turns into explicit-precision layers."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    calibrate = _method(method)
    reader.rewind()
    extra: dict[str, Any] = {"CalibMovingAverage": True} if method.lower() == "minmax" else {}
    if for_tensorrt:
        extra.update(ActivationSymmetric=True, WeightSymmetric=True, DedicatedQDQPair=True)
    quantize_static(
        str(pre_path),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range and not for_tensorrt,
        activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude or None,
        calibrate_method=calibrate,
        extra_options=extra,
    )
    if for_tensorrt:
        _set_meta(out, {TRT_QUANT_KEY: "explicit"})


def build_fp16(src: Path, out: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))


def trt_calibration_cache(pre_path: Path, reader: CalibReader, work: Path, method: str) -> str:
    """TensorRT's calibration cache text: one scale per tensor (big-endian float32, hex), from the ranges
    the chosen calibration method computes (max |range| / 127: TensorRT's scales are symmetric)."""
    from onnxruntime.quantization import create_calibrator

    reader.rewind()
    calib = create_calibrator(
        str(pre_path),
        None,
        augmented_model_path=str(work / f"augmented-{method}.onnx"),
        calibrate_method=_method(method),
    )
    calib.collect_data(reader)
    data = calib.compute_data()
    header = {"minmax": "TRT-8600-MinMaxCalibration", "entropy": "TRT-8600-EntropyCalibration2"}
    lines = [header.get(method.lower(), "TRT-8600-EntropyCalibration2")]
    for name, rng in sorted(data.data.items()):
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in rng.range_value)
        scale = max(abs(lo), abs(hi)) / 127.0 or 1e-8
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def build_tensorrt_cache(fp32: Path, out: Path, cache_text: str) -> None:
    """The FP32 graph with the calibration cache in its metadata: one signed file carries both."""
    shutil.copyfile(fp32, out)
    _set_meta(out, {TRT_CALIB_KEY: cache_text, TRT_QUANT_KEY: "cache"})


def _set_meta(path: Path, values: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in values.items():
        entry = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
