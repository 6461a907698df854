"""MQTT message models. Every message carries `schema`; unknown schema versions are rejected.

Payloads are JSON, at most MAX_PAYLOAD_BYTES. `decode_message` is the one place bytes from the wire
become objects: it raises MessageError with a one-line reason for anything malformed.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.protocol.signing import SignedManifest

SCHEMA_VERSION: Literal[1] = 1
MAX_PAYLOAD_BYTES = 256 * 1024


SLOT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class MessageError(ValueError):
    """A payload that is not a valid message of the expected kind; the text says why in one line."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Literal[1] = Field(SCHEMA_VERSION, alias="schema", description="Message schema version.")
    device_id: str = Field(description="Sender or addressee; must match the topic's device id.")


class UpdateStateName(str, Enum):
    """Update states as reported to the server (mirrors edge_agent.update.states.State)."""

    def __str__(self) -> str:  # the value, wherever it is shown (console, logs, f-strings)
        return str(self.value)

    idle = "idle"
    downloading = "downloading"
    verifying = "verifying"
    preparing = "preparing"
    warming = "warming"
    active = "active"
    committed = "committed"
    rolling_back = "rolling_back"
    failed = "failed"


class ShadowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest: SignedManifest = Field(description="Signed manifest of the candidate to run beside the active model.")
    share: float = Field(0.1, gt=0, le=1, description="Share of frames the candidate also runs on.")


class MeasureSpec(BaseModel):
    """How the device picks among the targets it can run (see edge_agent/update/measure.py)."""

    model_config = ConfigDict(extra="forbid")
    budget_s: float | None = Field(
        None, ge=0, le=60, description="Seconds to time each candidate target; 0: do not measure; unset: the agent's."
    )
    prefer: str | None = Field(
        None, max_length=16, description="A target already measured best on this hardware: serve it, skip timing."
    )
    prefer_from: str | None = Field(None, max_length=100, description="The version whose measurement chose `prefer`.")


class Deployment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: str = Field("default", pattern=SLOT_PATTERN, description="Camera/model slot.")
    revision: int | None = Field(
        None,
        ge=0,
        description="The desired revision this slot's deployment was made at: a slot acts only when it changes, "
        "so a change to another slot does not retry this one's failed update. Unset: the message's revision.",
    )
    manifest: SignedManifest = Field(description="Signed manifest of the model version to run.")
    health_window_s: float = Field(10.0, ge=0, le=3600, description="Seconds a new model must stay healthy.")
    min_fps_ratio: float = Field(
        0.5, ge=0, le=1, description="Roll back if the new model's fps falls below this share of the old one's."
    )
    shadow: ShadowSpec | None = Field(None, description="A candidate to score beside the active model.")
    measure: MeasureSpec | None = Field(None, description="Timing of the candidate targets on the device.")
    sources: list[str] | None = Field(
        None,
        max_length=64,
        description="Cameras (by name) this slot serves, taken from the slot agent.yaml gave them; unset: as "
        "configured.",
    )


class DesiredState(_Msg):
    revision: int = Field(ge=0, description="Server-side revision; increases with every change.")
    deployments: list[Deployment] = Field(default_factory=list, max_length=16)
    mining: dict[str, Any] | None = Field(
        None, description="Hard-sample mining settings (agent.yaml `mining:` schema); overrides the local file."
    )


class TargetTiming(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(max_length=16)
    p50_ms: float | None = Field(None, description="Median latency of one inference on this device.")
    p99_ms: float | None = None
    runs: int = Field(0, ge=0)
    error: str | None = Field(None, max_length=300, description="Why this target could not be timed.")


class MeasuredTargets(BaseModel):
    """What a device measured when it installed a version (checked again by the server before it is kept)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=64)
    version: int = Field(ge=1)
    hardware_key: str = Field(max_length=200)
    timings: list[TargetTiming] = Field(default_factory=list, max_length=8)
    chosen: str = Field(max_length=16)
    reason: str = Field("", max_length=500)


class SlotReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    version: int | None = Field(None, description="Version currently serving frames.")
    state: UpdateStateName = UpdateStateName.idle
    target_version: int | None = Field(None, description="Version being installed, if any.")
    reason: str | None = Field(None, description="Why the last update failed, if it did.")
    shadow_model: str | None = Field(None, description="Candidate running in shadow, if any.")
    shadow_version: int | None = None
    shadow_reason: str | None = Field(None, description="Why the shadow candidate is not running, if so.")
    target: str | None = Field(None, max_length=16, description="The artifact target serving frames.")
    detail: str | None = Field(
        None, max_length=200, description="What the running update step is doing (building an engine, timing)."
    )
    measured: MeasuredTargets | None = Field(None, description="The last timing of a version's candidate targets.")
    sources: list[str] = Field(default_factory=list, max_length=64, description="The cameras this slot serves.")


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_version: str
    runtimes: list[str] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list)
    cpu_flags: list[str] = Field(default_factory=list)
    gpu: str | None = None
    gpu_memory_mb: int | None = Field(None, ge=0, description="The GPU's memory (a Jetson shares the system's).")
    gpu_compute_capability: str | None = Field(None, max_length=16, description="e.g. 9.0 for Hopper.")
    gpu_driver: str | None = Field(None, max_length=32)
    jetson_l4t: str | None = Field(None, max_length=16, description="Jetson Linux release, e.g. 36.3.0.")
    jetpack: str | None = Field(None, max_length=16, description="The JetPack that L4T release belongs to.")
    tensorrt: str | None = Field(None, description="TensorRT's version, only when its library loads here.")
    arch: str = ""
    cpu_model: str | None = Field(None, max_length=120)
    onnxruntime: str | None = Field(None, max_length=32, description="onnxruntime's version.")
    hardware_key: str | None = Field(
        None, max_length=200, description="Processor and engine versions: devices with equal keys rank targets alike."
    )
    preview_url: str | None = Field(None, max_length=300, description="The agent's /preview, where advertised.")
    slots: list[str] = Field(default_factory=list, max_length=8, description="The model slots this agent serves.")


class ReportedState(_Msg):
    revision: int = Field(ge=0, description="Desired revision the agent last acted on.")
    boot: str | None = Field(None, max_length=32, description="Random per agent process: `seq` counts within it.")
    seq: int = Field(
        0,
        ge=0,
        description="Counts this process's reports: the server applies none older than one it has (a report the "
        "broker delivers late must not undo a newer one).",
    )
    slots: dict[str, SlotReport] = Field(default_factory=dict)
    capabilities: Capabilities | None = None
    ts: float = Field(default_factory=time.time)


class StatusMessage(_Msg):
    status: Literal["online", "offline"]
    ts: float = Field(default_factory=time.time)


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    score: float
    box: tuple[float, float, float, float] | None = Field(None, description="x1,y1,x2,y2 in frame pixels.")


class SourceTelemetry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    ok: bool
    error: str | None = Field(None, max_length=500)
    decode_fps: float = 0.0
    infer_fps: float = 0.0
    dropped: int = 0
    staleness_ms_p50: float = 0.0
    staleness_ms_p99: float = 0.0
    reconnects: int = 0
    decoder: str = Field(
        "cpu", max_length=32, description="Where frames are decoded: cpu, nvv4l2decoder, cudacodec or ffmpeg-<hwaccel>."
    )
    decoder_note: str | None = Field(None, max_length=300, description="Why a GPU decode asked for is not used.")
    queue_depth: int = Field(0, description="Frames waiting for inference (0 or 1: only the newest is kept).")


class ShadowTelemetry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    version: int
    frames: int
    agreement: float | None = Field(None, description="Mean agreement: top-1 match or IoU-matched F1.")
    skipped: int = 0
    errors: int = 0


class BoardTelemetry(BaseModel):
    """What a Jetson's tegrastats reports (other boxes send none)."""

    model_config = ConfigDict(extra="forbid")
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    cpu_load_pct: float | None = None
    gpu_load_pct: float | None = None
    temp_c: dict[str, float] = Field(default_factory=dict, max_length=32, description="Sensor -> degrees C.")
    power_mw: dict[str, float] = Field(default_factory=dict, max_length=32, description="Power rail -> mW now.")
    power_in_mw: float | None = Field(None, description="The board's total input power.")


class Telemetry(_Msg):
    ts: float = Field(default_factory=time.time)
    slot: str = "default"
    model: str | None = None
    version: int | None = None
    fps: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p95: float = 0.0
    latency_ms_p99: float = 0.0
    staleness_ms_p50: float = 0.0
    staleness_ms_p99: float = 0.0
    frames: int = 0
    dropped: int = 0
    errors: int = 0
    source_ok: bool = True
    source_error: str | None = Field(None, max_length=500, description="Why the source is down, if it is.")
    last_prediction: list[Prediction] = Field(default_factory=list, max_length=20)
    queue_depth: int = 0
    sources: list[SourceTelemetry] = Field(default_factory=list, max_length=256)
    batch_sizes: dict[str, int] | None = Field(
        None, max_length=300, description="Inference runs per batch size (frames per run), since the loop started."
    )
    board: BoardTelemetry | None = Field(None, description="Power, thermal and GPU load (Jetson, tegrastats).")
    runtime_fallback: str | None = Field(
        None, max_length=300, description="Why the model serves from the CPU, when GPU faults moved it there."
    )
    shadow: ShadowTelemetry | None = None
    flywheel: dict[str, int] | None = Field(
        None, description="Hard-sample counters: mined, duplicates, rate_limited, spooled, pending, evicted, ..."
    )


class DetectionEvent(_Msg):
    ts: float = Field(default_factory=time.time)
    slot: str = "default"
    source: str = "cam0"
    model: str
    version: int
    frame: int
    predictions: list[Prediction] = Field(default_factory=list, max_length=100)


M = TypeVar("M", bound=BaseModel)


def encode_message(msg: BaseModel) -> bytes:
    return msg.model_dump_json(by_alias=True).encode("utf-8")


def decode_message(payload: bytes, model: type[M], expect_device: str | None = None) -> M:
    """Bytes from the wire -> message; MessageError (one line) for anything wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES} byte limit")
    try:
        data: Any = json.loads(payload)
    except RecursionError:  # hostile nesting ([[[[...) must cost the reader one log line, not its thread
        raise MessageError("payload nests too deeply to be a message") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise MessageError(f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MessageError(f"payload is a JSON {type(data).__name__}, expected an object")
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise MessageError(f"unsupported schema version {schema!r}; this build speaks {SCHEMA_VERSION}")
    try:
        msg = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageError(f"invalid {model.__name__}: {where}: {first['msg']}") from exc
    if expect_device is not None and getattr(msg, "device_id", None) != expect_device:
        raise MessageError(f"device_id {getattr(msg, 'device_id', None)!r} does not match topic {expect_device!r}")
    return msg
