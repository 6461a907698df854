"""The runtime plugin interface: load a model file, run one input, warm up, close."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class RuntimeError_(Exception):
    """A model that cannot be loaded or run; str() says why."""


class RuntimeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    intra_threads: int = Field(0, ge=0, description="Threads inside one operator; 0 = one per physical core.")
    allow_spinning: bool = Field(False, description="Let idle threads spin: lower latency, more CPU.")
    providers: list[str] = Field(
        default_factory=list, description="Execution providers in order; empty = best available."
    )
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="GPU engine precision (TensorRT).")
    cache_dir: Path | None = Field(None, description="Where TensorRT engines and timing caches are kept.")
    artifact_sha256: str | None = Field(None, description="Identifies the artifact in engine cache keys.")
    int8_calibration: Path | None = Field(None, description="TensorRT INT8 calibration cache shipped with the model.")
    int8_explicit: bool = Field(
        False, description="The model carries its INT8 scales as Q/DQ nodes (explicit quantization): no calibrator."
    )


def engine_cache_key(sha256: str, trt_version: str, gpu: str, precision: str) -> str:
    """An engine is valid only for this artifact, TensorRT version, GPU model and precision."""
    safe_gpu = "".join(ch if ch.isalnum() else "-" for ch in gpu).strip("-").lower() or "gpu"
    return f"{sha256[:16]}-trt{trt_version}-{safe_gpu}-{precision}"


class Runtime(ABC):
    name: str = "base"

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        self.model_path = model_path
        self.options = options

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    @abstractmethod
    def input_dtype(self) -> np.dtype: ...

    @property
    def max_batch(self) -> int | None:
        """Images one run takes: None where the batch axis is dynamic (any number), else the model's fixed
        batch (1 for most exports; a fixed N > 1 is padded to N)."""
        return self.input_shape[0]

    @property
    def on_gpu(self) -> bool:
        """Whether runs go to a GPU, where each change of input shape is costly (see `LoadedModel.buckets`)."""
        return False

    @abstractmethod
    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one batch; returns the model's outputs in declaration order."""

    def warmup(self, runs: int = 2) -> list[np.ndarray]:
        """A model is ready when its first inference has run: run it on a zero input."""
        x = np.zeros(self.input_shape, dtype=self.input_dtype)
        out: list[np.ndarray] = []
        for _ in range(runs):
            out = self.run(x)
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


TRT_CALIB_KEY = "edgeloop.trt_int8_calibration"
TRT_QUANT_KEY = "edgeloop.trt_int8"  # explicit: Q/DQ nodes carry the scales; cache: TRT_CALIB_KEY does


def _metadata(model_path: Path) -> dict[str, str]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    del sess
    return meta


def trt_quantization(model_path: Path) -> str | None:
    """How a `tensorrt` artifact carries its INT8 scales: explicit (Q/DQ nodes), cache, or None (neither)."""
    meta = _metadata(model_path)
    mode = meta.get(TRT_QUANT_KEY)
    if mode in ("explicit", "cache"):
        return mode
    return "cache" if TRT_CALIB_KEY in meta else None


def extract_trt_calibration(model_path: Path, out_dir: Path) -> Path | None:
    """Write the INT8 calibration cache a `tensorrt` artifact carries in its ONNX metadata; None if it has none.

    The cache lives inside the signed artifact, so it is covered by the artifact's sha256 check.
    """
    text = _metadata(model_path).get(TRT_CALIB_KEY)
    if not text:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model_path.stem}.{model_path.parent.name}.calib"
    path.write_text(text)
    return path
