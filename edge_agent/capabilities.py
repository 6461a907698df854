"""What this device can run: reported to the server, used to pick an artifact target."""

from __future__ import annotations

import platform

from edge_agent import __version__
from edge_agent.hardware import cpu_flags, cpu_model, gpu_info, hardware_key, tensorrt_version, usable_providers
from edge_agent.protocol.messages import Capabilities
from edge_agent.runtimes import available_runtimes


def device_kind(caps: Capabilities) -> str:
    """tensorrt, cuda or cpu: which family of artifact targets this device runs best. TensorRT counts only when
    its library loaded (`caps.tensorrt`), never because onnxruntime lists its provider."""
    if caps.gpu and caps.tensorrt:
        return "tensorrt"
    if caps.gpu and "CUDAExecutionProvider" in caps.providers:
        return "cuda"
    return "cpu"


def detect() -> Capabilities:
    listed: list[str] = []
    ort_version = None
    try:
        import onnxruntime as ort

        listed, ort_version = list(ort.get_available_providers()), str(ort.__version__)
    except ImportError:
        pass
    gpu, trt = gpu_info(), tensorrt_version()
    cpu = cpu_model()
    return Capabilities(
        agent_version=__version__,
        runtimes=available_runtimes(),
        providers=usable_providers(listed, gpu, trt),
        cpu_flags=cpu_flags(),
        tensorrt=trt if gpu is not None else None,
        gpu=gpu.name if gpu else None,
        gpu_memory_mb=gpu.memory_mb if gpu else None,
        gpu_compute_capability=gpu.compute_capability if gpu else None,
        gpu_driver=gpu.driver if gpu else None,
        jetson_l4t=gpu.jetson_l4t if gpu else None,
        jetpack=gpu.jetpack if gpu else None,
        arch=platform.machine(),
        cpu_model=cpu,
        onnxruntime=ort_version,
        hardware_key=hardware_key(gpu.name if gpu else None, cpu, ort_version, trt if gpu is not None else None),
    )
