"""Inference runtimes, one plugin file each. `create_runtime` picks by name."""

from __future__ import annotations

from pathlib import Path

from edge_agent.runtimes.base import Runtime, RuntimeError_, RuntimeOptions


def available_runtimes() -> list[str]:
    names = []
    try:
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        pass
    try:
        import tensorrt  # noqa: F401

        names.append("tensorrt")
    except ImportError:
        pass
    return names


def create_runtime(name: str, model_path: Path, options: RuntimeOptions | None = None) -> Runtime:
    options = options or RuntimeOptions()
    if name == "onnxruntime":
        from edge_agent.runtimes.onnxruntime_rt import OnnxRuntime

        return OnnxRuntime(model_path, options)
    if name == "tensorrt":
        from edge_agent.runtimes.tensorrt_rt import TensorRTRuntime

        return TensorRTRuntime(model_path, options)
    raise RuntimeError_(f"unknown runtime {name!r}; this agent has {available_runtimes()}")


__all__ = ["Runtime", "RuntimeError_", "RuntimeOptions", "available_runtimes", "create_runtime"]
