"""onnxruntime: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.hardware import gpu_info, gpu_name, tensorrt_version, usable_providers
from edge_agent.runtimes.base import Runtime, RuntimeError_, RuntimeOptions, engine_cache_key

log = logging.getLogger(__name__)
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


@functools.cache
def _preload_cuda(ort: Any) -> None:
    """CUDA and cuDNN installed as pip packages (nvidia-*): onnxruntime's own loader finds them (1.21+)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # noqa: BLE001 - the session still tries the system's libraries
            log.info("onnxruntime could not preload CUDA libraries: %s", exc)


def options_cache_default() -> Path:
    return Path.home() / ".cache" / "edgeloop" / "engines"


def physical_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        super().__init__(model_path, options)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = options.intra_threads or physical_cores()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        spin = "1" if options.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        available = usable_providers(ort.get_available_providers(), gpu_info(), tensorrt_version())
        if "CUDAExecutionProvider" in available:
            _preload_cuda(ort)
        wanted = options.providers or [p for p in _PREFERRED if p in available]
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        provider_options = [self._provider_options(p, options) for p in providers]
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=so, providers=providers, provider_options=provider_options
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RuntimeError_(f"onnxruntime cannot load {model_path.name}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise RuntimeError_(f"model has {len(inputs)} inputs; edgeloop models take exactly one")
        inp = inputs[0]
        batch, *rest = inp.shape
        if len(inp.shape) != 4 or not all(isinstance(d, int) and d > 0 for d in rest):
            raise RuntimeError_(
                f"model input {inp.name} has shape {inp.shape}; edgeloop models take (batch, 3, H, W) or "
                "(batch, H, W, 3) with only the batch axis dynamic"
            )
        self._dynamic_batch = not (isinstance(batch, int) and batch > 0)
        if inp.type not in _DTYPES:
            raise RuntimeError_(f"model input type {inp.type} is not supported")
        self._input_name = inp.name
        self._shape = (1 if self._dynamic_batch else int(batch), *(int(d) for d in rest))
        self._dtype = np.dtype(_DTYPES[inp.type])
        self.providers = self._session.get_providers()
        log.info("onnxruntime loaded %s on %s, %d threads", model_path.name, self.providers[0], so.intra_op_num_threads)

    @staticmethod
    def _provider_options(provider: str, options: RuntimeOptions) -> dict[str, str]:
        """TensorRT EP: engines and timing cache on disk under a key of (artifact sha256, TensorRT
        version, GPU name, precision). Runs only where a GPU and TensorRT are present (not on CI)."""
        if provider == "TensorrtExecutionProvider":
            base = options.cache_dir or options_cache_default()
            key = engine_cache_key(
                options.artifact_sha256 or "nosha", tensorrt_version() or "ort", gpu_name() or "gpu", options.precision
            )
            out = {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(base / key),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(base / "timing"),
                "trt_fp16_enable": "True" if options.precision in ("fp16", "int8") else "False",
                "trt_int8_enable": "True" if options.precision == "int8" else "False",
            }
            if options.precision == "int8" and not options.int8_explicit and options.int8_calibration is not None:
                # the cache is TensorRT's own text format, not onnxruntime's flatbuffer table: say so, or it is
                # misread; an explicit (Q/DQ) model takes no table at all
                out["trt_int8_calibration_table_name"] = str(options.int8_calibration)
                out["trt_int8_use_native_calibration_table"] = "True"
            (base / key).mkdir(parents=True, exist_ok=True)
            (base / "timing").mkdir(parents=True, exist_ok=True)
            return out
        if provider == "CUDAExecutionProvider":
            return {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC"}
        return {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def input_dtype(self) -> np.dtype:
        return self._dtype

    @property
    def max_batch(self) -> int | None:
        return None if self._dynamic_batch else self._shape[0]

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._input_name: x})

    def close(self) -> None:
        self._session = None
