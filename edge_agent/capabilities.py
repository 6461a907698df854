"""What this device can run: reported to the server, used to pick an artifact target."""

from __future__ import annotations

import platform

from edge_agent import __version__
from edge_agent.hardware import cpu_flags, gpu_name, tensorrt_version
from edge_agent.protocol.messages import Capabilities
from edge_agent.runtimes import available_runtimes


def device_kind(caps: Capabilities) -> str:
    """tensorrt, cuda or cpu: which family of artifact targets this device runs best."""
    if caps.gpu and (caps.tensorrt or "TensorrtExecutionProvider" in caps.providers):
        return "tensorrt"
    if caps.gpu and "CUDAExecutionProvider" in caps.providers:
        return "cuda"
    return "cpu"


def detect() -> Capabilities:
    providers: list[str] = []
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        pass
    trt = tensorrt_version()
    return Capabilities(
        agent_version=__version__,
        runtimes=available_runtimes(),
        providers=providers,
        cpu_flags=cpu_flags(),
        tensorrt=trt,
        gpu=gpu_name(),
        arch=platform.machine(),
    )
