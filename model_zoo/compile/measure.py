"""Latency of an artifact on every execution provider this build host has, at batch 1 and at the agent's
typical batch (where the model takes any batch), with the faster thread setting.

Which providers count is decided the way the agent decides it (edge_agent/hardware.py): CPU always; CUDA
only where a GPU is found; TensorRT only where its library loads, never because onnxruntime lists it.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from typing import Any

import numpy as np

from edge_agent.hardware import cpu_flags, cpu_model, gpu_info, hardware_key, tensorrt_version, usable_providers
from model_zoo.compile.report import PROVIDER_CLASS

log = logging.getLogger(__name__)
AGENT_BATCH = 8  # the batch a GPU agent with a handful of cameras runs (agent.yaml `batch:`)


def host_info() -> dict[str, Any]:
    """The build host: CPU features, GPU, TensorRT, the providers measured on, and its hardware key (the
    same key devices report, so a build host's row and a device's row can be compared)."""
    try:
        import onnxruntime as ort

        listed, ort_version = list(ort.get_available_providers()), str(ort.__version__)
    except ImportError:
        listed, ort_version = ["CPUExecutionProvider"], None
    gpu, trt = gpu_info(), tensorrt_version()
    flags = cpu_flags()
    providers = [p for p in usable_providers(listed, gpu, trt) if p in PROVIDER_CLASS]
    cpu = cpu_model()
    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "avx2": "avx2" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & set(flags)),
        "gpu": gpu.name if gpu else None,
        "tensorrt": trt if gpu else None,
        "onnxruntime": ort_version,
        "providers": providers or ["CPUExecutionProvider"],
        "key": hardware_key(gpu.name if gpu else None, cpu, ort_version, trt if gpu else None),
    }


def _session(path: Any, provider: str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    chain = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=chain)
    if sess.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} did not load this model (onnxruntime fell back to {sess.get_providers()[0]})")
    return sess


def _time(sess: Any, x: np.ndarray, seconds: float) -> dict[str, float]:
    name = sess.get_inputs()[0].name
    for _ in range(5):
        sess.run(None, {name: x})
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 20:
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)), "runs": len(times)}


def measure_latency(
    path: Any,
    shape: tuple[int, ...],
    dtype: str = "float32",
    seconds: float = 1.5,
    provider: str = "CPUExecutionProvider",
) -> dict[str, Any]:
    """p50/p99 of one input of `shape` on `provider`; on the CPU with the faster of 1 thread and all cores
    (the agent can choose either)."""
    cores = max(1, os.cpu_count() or 1)
    x = np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)
    best: dict[str, Any] | None = None
    for threads in sorted({1, cores}) if provider == "CPUExecutionProvider" else [0]:
        res = {**_time(_session(path, provider, threads), x, seconds), "threads": threads}
        if best is None or res["p50"] < best["p50"]:
            best = res
    assert best is not None
    return best


def describe_input(path: Any) -> tuple[int, ...]:
    """The model input's shape, batch 1 where the axis is dynamic."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def dynamic_batch(path: Any) -> bool:
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return not dim.HasField("dim_value") or dim.dim_value <= 0


def measure_providers(path: Any, shape: tuple[int, ...], providers: list[str], seconds: float) -> list[dict[str, Any]]:
    """One row per (provider, batch): batch 1, and AGENT_BATCH where the model takes any batch."""
    batches = [1, AGENT_BATCH] if dynamic_batch(path) else [1]
    rows: list[dict[str, Any]] = []
    for provider in providers:
        for batch in batches:
            try:
                lat = measure_latency(path, (batch, *shape[1:]), seconds=seconds, provider=provider)
            except Exception as exc:  # noqa: BLE001 - one provider failing must not hide the others
                log.warning("%s on %s at batch %d: %s", path, provider, batch, exc)
                rows.append(
                    {"provider": provider, "device_class": PROVIDER_CLASS[provider], "batch": batch,
                     "error": str(exc).splitlines()[0][:200]}
                )  # fmt: skip
                break
            rows.append(
                {
                    "provider": provider,
                    "device_class": PROVIDER_CLASS[provider],
                    "batch": batch,
                    "p50_ms": round(lat["p50"], 3),
                    "p99_ms": round(lat["p99"], 3),
                    "threads": lat["threads"],
                }
            )
    return rows
