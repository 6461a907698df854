"""What this device can run: reported to the server, used to pick an artifact target."""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from pathlib import Path

from edge_agent import __version__
from edge_agent.protocol.messages import Capabilities
from edge_agent.runtimes import available_runtimes

_INTERESTING_FLAGS = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "neon", "asimd", "asimddp")


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return sorted(f for f in flags if f in _INTERESTING_FLAGS)


@functools.cache
def gpu_name() -> str | None:
    """The first NVIDIA GPU's name (nvidia-smi), or None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    name = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None
    return name or None


def tensorrt_version() -> str | None:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


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
