"""onnxruntime: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edge_agent.runtimes.base import Runtime, RuntimeError_, RuntimeOptions

log = logging.getLogger(__name__)
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


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
        available = ort.get_available_providers()
        wanted = options.providers or [p for p in _PREFERRED if p in available]
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RuntimeError_(f"onnxruntime cannot load {model_path.name}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise RuntimeError_(f"model has {len(inputs)} inputs; edgeloop models take exactly one")
        inp = inputs[0]
        if not all(isinstance(d, int) and d > 0 for d in inp.shape):
            raise RuntimeError_(f"model input {inp.name} has a dynamic shape {inp.shape}; export it static")
        if inp.type not in _DTYPES:
            raise RuntimeError_(f"model input type {inp.type} is not supported")
        self._input_name = inp.name
        self._shape = tuple(int(d) for d in inp.shape)
        self._dtype = np.dtype(_DTYPES[inp.type])
        self.providers = self._session.get_providers()
        log.info("onnxruntime loaded %s on %s, %d threads", model_path.name, self.providers[0], so.intra_op_num_threads)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def input_dtype(self) -> np.dtype:
        return self._dtype

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._input_name: x})

    def close(self) -> None:
        self._session = None
