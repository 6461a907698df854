"""What this device can run: reported to the server, used to pick an artifact target."""

from __future__ import annotations

import platform
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


def detect() -> Capabilities:
    providers: list[str] = []
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        pass
    trt = None
    try:
        import tensorrt

        trt = str(tensorrt.__version__)
    except ImportError:
        pass
    return Capabilities(
        agent_version=__version__,
        runtimes=available_runtimes(),
        providers=providers,
        cpu_flags=cpu_flags(),
        tensorrt=trt,
        arch=platform.machine(),
    )
