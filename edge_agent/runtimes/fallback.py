"""When the GPU fails under a serving model (out of memory, a driver reset, a lost device), the camera must
not go dark: after a few such errors in a row the model is loaded again on the CPU, from the same verified
artifact, and serves from there (slower, and said so in telemetry) until the next install or restart."""

from __future__ import annotations

from edge_agent.runtimes import create_runtime
from edge_agent.runtimes.base import Runtime

GPU_FAULTS_BEFORE_CPU = 3  # in a row: one bad frame is not a broken GPU
_SIGNS = (
    "cuda",
    "cudnn",
    "cublas",
    "out of memory",
    "failed to allocate memory",
    "device-side",
    "illegal memory access",
    "driver",
    "gpu",
    "tensorrt",
    "nvinfer",
)


def is_gpu_fault(exc: BaseException) -> bool:
    """Whether an inference error came from the GPU rather than from the frame or the model."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(sign in text for sign in _SIGNS)


def on_cpu(runtime: Runtime) -> Runtime:
    """The same artifact on onnxruntime's CPU provider (a TensorRT artifact carries an ONNX graph it runs)."""
    options = runtime.options.model_copy(update={"providers": ["CPUExecutionProvider"], "precision": "fp32"})
    return create_runtime("onnxruntime", runtime.model_path, options)
