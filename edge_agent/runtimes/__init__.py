"""Inference runtimes, one plugin file each, registered by name in `RUNTIMES` (as the miners are in
`MINERS`). A plugin imports its engine (onnxruntime, tensorrt) only when it is created or asked whether
it is available, so every plugin can be listed on every device."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edge_agent.runtimes.base import Runtime, RuntimeError_, RuntimeOptions
from edge_agent.runtimes.onnxruntime_rt import OnnxRuntime
from edge_agent.runtimes.tensorrt_rt import TensorRTRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    "onnxruntime": OnnxRuntime,
    "tensorrt": TensorRTRuntime,
}
# the Python package each runtime needs
_PACKAGES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}


def available_runtimes() -> list[str]:
    """The registered runtimes whose engine is installed here."""
    return [name for name in RUNTIMES if importlib.util.find_spec(_PACKAGES[name]) is not None]


def create_runtime(name: str, model_path: Path, options: RuntimeOptions | None = None) -> Runtime:
    cls = RUNTIMES.get(name)
    if cls is None:
        raise RuntimeError_(f"unknown runtime {name!r}; this agent has {available_runtimes()}")
    return cls(model_path, options or RuntimeOptions())


__all__ = ["RUNTIMES", "Runtime", "RuntimeError_", "RuntimeOptions", "available_runtimes", "create_runtime"]
