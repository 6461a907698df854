"""Compile a trained checkpoint into every artifact target, measure each where it will run, recommend.

The package, one concept per module:
- `targets.py`: the table of targets; each row owns its build function.
- `quantize.py`: INT8 (CPU and TensorRT's explicit Q/DQ form), fp16, TensorRT's calibration cache.
- `measure.py`: the build host (its providers and hardware key) and latency per provider and batch.
- `recommend.py`: the recommendation per device class from the measured rows.
- `report.py`: the report's rows and the table text.
- `pipeline.py`: `compile_checkpoint`, which runs the above in order.
"""

from model_zoo.compile.measure import AGENT_BATCH, host_info, measure_latency, measure_providers
from model_zoo.compile.pipeline import compile_checkpoint, engine_row
from model_zoo.compile.quantize import CALIBRATION_METHODS, CompileError, trt_calibration_cache
from model_zoo.compile.recommend import recommend
from model_zoo.compile.report import DEVICE_CLASSES, PROVIDER_CLASS, CompileReport, TargetResult, table_text
from model_zoo.compile.targets import DEFAULT_TARGETS, TARGETS, TRT_INT8_MODES, TargetInfo

__all__ = [
    "AGENT_BATCH",
    "CALIBRATION_METHODS",
    "DEFAULT_TARGETS",
    "DEVICE_CLASSES",
    "PROVIDER_CLASS",
    "TARGETS",
    "TRT_INT8_MODES",
    "CompileError",
    "CompileReport",
    "TargetInfo",
    "TargetResult",
    "compile_checkpoint",
    "engine_row",
    "host_info",
    "measure_latency",
    "measure_providers",
    "recommend",
    "table_text",
    "trt_calibration_cache",
]
