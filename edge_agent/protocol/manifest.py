"""The model manifest: everything an agent needs to run one model version, signed by the server."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Task = Literal["classify", "detect"]
DecoderType = Literal["classify", "yolov8"]
Target = Literal["onnx-fp32", "onnx-int8", "onnx-fp16", "tensorrt"]

TASK_DECODERS: dict[str, tuple[str, ...]] = {"classify": ("classify",), "detect": ("yolov8",)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    shape: tuple[int, int, int, int] = Field(description="Model input shape, e.g. (1, 3, 224, 224).")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Tensor layout of the model input.")
    color: Literal["RGB", "BGR"] = Field("RGB", description="Channel order the model expects.")
    resize: Literal["letterbox", "stretch"] = Field("stretch", description="How frames are fitted.")
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="Per-channel mean, 0-1 scale.")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="Per-channel std, 0-1 scale.")
    dtype: Literal["float32", "float16", "uint8"] = Field("float32", description="Input element type.")

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if any(d <= 0 for d in v):
            raise ValueError(f"input shape must be static and positive, got {v}")
        return v

    @field_validator("mean")
    @classmethod
    def _finite_mean(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"mean must be three finite numbers, got {v}")
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(x) and x > 0 for x in v):
            raise ValueError(f"std must be three finite numbers above 0 (the input is divided by it), got {v}")
        return v

    @property
    def hw(self) -> tuple[int, int]:
        if self.layout == "NCHW":
            return self.shape[2], self.shape[3]
        return self.shape[1], self.shape[2]


class DecoderSpec(_Strict):
    type: DecoderType = Field(description="Output decoder: classify (logits/probs) or yolov8 ([1,4+C,N]).")
    conf_threshold: float = Field(0.25, ge=0.0, le=1.0, description="Minimum score kept.")
    iou_threshold: float = Field(0.45, ge=0.0, le=1.0, description="NMS IoU threshold (detectors).")
    max_detections: int = Field(100, ge=1, le=10000, description="Detections kept after NMS.")


class ArtifactEntry(_Strict):
    url: str = Field(description="Download path, relative to the server URL, or absolute URL.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the artifact bytes.")
    length: int = Field(gt=0, description="Exact artifact size in bytes; agents download no more.")
    latency_ms: float | None = Field(None, description="Latency p50 measured on the build host, if any.")
    latency_p99_ms: float | None = Field(None, description="Latency p99 measured on the build host, if any.")
    measured_on: str | None = Field(None, description="Device class the latency was measured on (cpu, cuda, ...).")
    accuracy: dict[str, float] = Field(default_factory=dict, description="Measured metrics, if any.")
    accuracy_delta: float | None = Field(None, description="Primary metric minus FP32's, in points.")


class Compatibility(_Strict):
    min_agent_version: str = Field("0.1.0", description="Oldest agent release that can run this.")
    runtimes: tuple[str, ...] = Field(("onnxruntime",), description="Runtimes able to load the artifacts.")


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Model name.")
    version: int = Field(ge=1, description="Monotonic version within the model.")
    task: Task
    classes: tuple[str, ...] = Field(min_length=1, description="Class names in output order.")
    input: InputSpec
    decoder: DecoderSpec
    artifacts: dict[Target, ArtifactEntry] = Field(min_length=1)
    compatibility: Compatibility = Field(default_factory=Compatibility)
    created_at: datetime
    expires_at: datetime
    rollback: bool = Field(False, description="Signed permission to install over a newer trusted version.")
    rollback_device: str | None = Field(
        None, max_length=64, description="A rollback is valid for this device only (replayed on another: refused)."
    )
    rollback_revision: int | None = Field(
        None, ge=1, description="...and only in the desired state of this revision (replayed later: refused)."
    )
    recommended: dict[str, Target] = Field(
        default_factory=dict, description="Device class (cpu, cuda, tensorrt) -> the target measured best for it."
    )
    lineage: dict[str, str] = Field(
        default_factory=dict, description="Where this version came from: dataset, fine-tuned-from, job."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        allowed = TASK_DECODERS[self.task]
        if self.decoder.type not in allowed:
            raise ValueError(f"task {self.task!r} needs decoder {allowed}, got {self.decoder.type!r}")
        if self.expires_at <= self.created_at:
            raise ValueError("manifest expires before it was created")
        missing = {k: v for k, v in self.recommended.items() if v not in self.artifacts}
        if missing:
            raise ValueError(f"recommended targets {missing} have no artifact")
        return self

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    def expired(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(timezone.utc)
        return now >= self.expires_at


class RefError(ValueError):
    """A NAME:VERSION reference that cannot be read; str() shows what was expected and what came."""


def parse_ref(text: str) -> tuple[str, int]:
    """NAME:VERSION (a model version, a dataset version) -> (name, version); the inverse of `Manifest.ref`."""
    name, version = parse_ref_latest(text)
    if version is None:
        raise RefError(f"expected NAME:VERSION, got {text!r}")
    return name, version


def parse_ref_latest(text: str) -> tuple[str, int | None]:
    """NAME or NAME:VERSION -> (name, version or None for the latest)."""
    name, colon, version = text.strip().rpartition(":")
    if not colon:
        name, version = version, ""
    if not name or (colon and not version.isdigit()):
        raise RefError(f"expected NAME or NAME:VERSION, got {text!r}")
    return name, int(version) if version else None


def canonical_json(data: Any) -> bytes:
    """The bytes that get signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
