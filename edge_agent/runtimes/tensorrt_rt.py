"""Native TensorRT (10.x Python API) with cuda-python for device memory.

UNVERIFIED on the project's CI (no GPU, no TensorRT there): written against the TensorRT 10 API
(`execute_async_v3`, named I/O tensors) and kept behind the runtime plugin interface. The engine is
built from the ONNX artifact on first load and cached on disk under a key of (artifact sha256,
TensorRT version, GPU name, precision), with a shared timing cache to make rebuilds fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.hardware import gpu_name
from edge_agent.runtimes.base import Runtime, RuntimeError_, RuntimeOptions, engine_cache_key
from edge_agent.runtimes.onnxruntime_rt import options_cache_default

log = logging.getLogger(__name__)


def _check(result: Any) -> Any:
    """cuda-python calls return (err, *values); raise on error, return the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError_(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTRuntime(Runtime):
    name = "tensorrt"

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        super().__init__(model_path, options)
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as exc:
            raise RuntimeError_(f"native TensorRT needs tensorrt and cuda-python: {exc}") from exc

        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        cache = options.cache_dir or options_cache_default()
        key = engine_cache_key(
            options.artifact_sha256 or "nosha", trt.__version__, gpu_name() or "gpu", options.precision
        )
        engine_path = cache / f"{key}.engine"
        if engine_path.exists():
            blob = engine_path.read_bytes()
        else:
            blob = self._build(model_path, cache / "timing.cache", options)
            cache.mkdir(parents=True, exist_ok=True)
            tmp = engine_path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            tmp.replace(engine_path)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(blob)
        if self._engine is None:
            raise RuntimeError_(f"TensorRT could not load engine {engine_path.name}")
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, np.ndarray]] = {}
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        for i in range(self._engine.num_io_tensors):
            tname = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(tname))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(tname)))
            host = np.empty(shape, dtype)
            dev = _check(cudart.cudaMalloc(host.nbytes))
            self._buffers[tname] = (dev, host)
            self._context.set_tensor_address(tname, dev)
            is_input = self._engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs).append(tname)
        if len(self._inputs) != 1:
            raise RuntimeError_(f"engine has {len(self._inputs)} inputs; edgeloop models take exactly one")

    def _build(self, onnx_path: Path, timing_path: Path, options: RuntimeOptions) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError_(f"TensorRT cannot parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        if options.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if options.int8_explicit:
                # explicit quantization (TensorRT 10's way; implicit calibrators are deprecated since 10.1): the
                # Q/DQ nodes in the graph carry every scale, so no calibrator is set
                pass
            elif options.int8_calibration is not None and options.int8_calibration.exists():
                config.int8_calibrator = cache_calibrator(trt, options.int8_calibration)
            else:
                raise RuntimeError_(
                    "an int8 engine needs Q/DQ nodes in the model or the calibration cache shipped with it"
                )
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise RuntimeError_(f"TensorRT failed to build an engine for {onnx_path.name}")
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        log.info("built TensorRT engine for %s (%s)", onnx_path.name, options.precision)
        return bytes(blob)

    @property
    def on_gpu(self) -> bool:
        return True

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._buffers[self._inputs[0]][1].shape)

    @property
    def input_dtype(self) -> np.dtype:
        return self._buffers[self._inputs[0]][1].dtype

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        dev, host = self._buffers[self._inputs[0]]
        np.copyto(host, x, casting="same_kind")
        _check(cudart.cudaMemcpyAsync(dev, host.ctypes.data, host.nbytes, h2d, self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError_("TensorRT execution failed")
        outs = []
        for name in self._outputs:
            dev, host = self._buffers[name]
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, dev, host.nbytes, d2h, self._stream))
            outs.append(host)
        _check(cudart.cudaStreamSynchronize(self._stream))
        return [o.copy() for o in outs]

    def close(self) -> None:
        for dev, _ in self._buffers.values():
            self._cudart.cudaFree(dev)
        self._buffers.clear()


def cache_calibrator(trt: Any, cache: Path) -> Any:
    """A calibrator that only hands TensorRT the cache made at compile time; it never calibrates on the device.
    Its algorithm matches the cache's header (TensorRT ignores a cache written for another algorithm and
    would then try to calibrate with no data)."""
    header = cache.read_text().split("\n", 1)[0]
    base = trt.IInt8MinMaxCalibrator if "MinMaxCalibration" in header else trt.IInt8EntropyCalibrator2

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return cache.read_bytes()

        def write_calibration_cache(self, data: bytes) -> None:
            return None

    return Calibrator()
