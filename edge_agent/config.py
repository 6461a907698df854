"""Agent configuration: a YAML file and/or command-line flags, validated strictly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edge_agent.camera.sources import csi_pipeline
from edge_agent.flywheel.config import MiningConfig
from edge_agent.protocol.messages import SLOT_PATTERN
from edge_agent.protocol.topics import valid_device_id
from edge_agent.runtimes.base import RuntimeOptions


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Name in telemetry (default camN).")
    uri: str = Field(
        description="File path, USB index (0), /dev/videoN, rtsp://, http:// MJPEG, GStreamer pipeline, or a "
        "Jetson CSI camera: csi://0?width=1280&height=720&fps=30[&flip=0]."
    )
    slot: str = Field(
        "default",
        pattern=SLOT_PATTERN,
        description="The model slot this camera feeds (see `slots`); the desired state may reassign it.",
    )
    loop_file: bool = Field(True, description="Restart a file source at its end.")
    pace_file: bool = Field(True, description="Play a file source at its native frame rate.")
    stall_timeout_s: float = Field(5.0, gt=0, description="Reconnect when no frame arrives for this long.")
    decode_threads: int = Field(
        1,
        ge=0,
        le=64,
        description="FFmpeg decoding threads (file, RTSP, HTTP). 1 leaves the other cores to the model; "
        "raise it for a high-resolution stream one core cannot decode in time; 0 = FFmpeg's choice.",
    )

    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="Where to decode: auto = on the GPU where the box has one (Jetson nvv4l2decoder, OpenCV "
        "cudacodec, FFmpeg hardware acceleration), else the CPU; gpu = try it and report why not; cpu = never.",
    )
    codec: Literal["h264", "h265"] = Field("h264", description="The stream's codec, for a Jetson's decode pipeline.")

    @field_validator("uri")
    @classmethod
    def _csi(cls, v: str) -> str:
        if v.startswith("csi://"):
            csi_pipeline(v)  # a Jetson CSI camera: refused at load when its parameters are wrong
        return v


class EndpointsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="Serve /healthz, /metrics and /preview.")
    host: str = Field("127.0.0.1", description="Bind address; keep localhost unless the network is trusted.")
    port: int = Field(9108, ge=0, le=65535, description="HTTP port (0 = any free port).")
    preview_fps: float = Field(10.0, gt=0, le=60, description="Frame rate of the /preview stream.")
    advertise_url: str | None = Field(
        None, description="Base URL the fleet console links to (e.g. http://cam-3.lan:9108); unset: not advertised."
    )


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(description="This device's id, as enrolled on the server.")
    server_url: str = Field(description="Fleet server base URL, e.g. http://fleet:8080.")
    mqtt_url: str = Field(description="Broker URL, e.g. mqtt://fleet:1883 or mqtts://fleet:8883.")
    mqtt_ca: str | None = Field(
        None,
        description="PEM of the CA that signed the broker's certificate, pinned for mqtts:// (from enrollment); "
        "unset: the system's CAs.",
    )
    token: SecretStr = Field(description="Device credential from `edgeloop devices enroll`.")
    root_public_key: str = Field(description="The fleet's pinned root public key (base64 ed25519).")
    sources: list[SourceConfig] = Field(
        min_length=1,
        max_length=16,
        description="Cameras this agent watches; each feeds one slot's model. `source: URI` is accepted for a single "
        "camera.",
    )
    slots: list[str] | None = Field(
        None,
        max_length=8,
        description="Model slots this agent serves, each with its own model, cameras and update state; unset: "
        "`default` and every slot a camera names.",
    )
    data_dir: Path = Field(Path("/var/lib/edgeloop"), description="Models, update and trust state.")
    mqtt_keepalive_s: int = Field(
        30,
        ge=2,
        le=1200,
        description="Seconds between MQTT keepalive pings: a link that went silent is noticed after 1.5x this "
        "(and the broker publishes the device's offline status then). Lower it on links that drop silently.",
    )
    telemetry_interval_s: float = Field(2.0, gt=0, le=3600, description="Seconds between telemetry messages.")
    download_retry_s: float = Field(120.0, ge=0, description="Keep retrying a failing download this long.")
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions, description="Inference runtime settings.")
    batch: int | Literal["auto"] = Field(
        "auto",
        description="Most frames one inference takes, one per camera (a model without a dynamic batch axis takes "
        "its own fixed batch). auto: on a GPU, one run for every camera; on a CPU, measured when a model loads: "
        "batching only where it is faster per image (on a few cores it rarely is, and the batch stays 1).",
    )
    gather_ms: float = Field(
        0.0, ge=0, le=100, description="How long a batch may wait for more cameras' frames; 0: never waits."
    )
    measure_budget_s: float = Field(
        3.0,
        ge=0,
        le=60,
        description="Seconds to time each artifact target this device can run when it installs a version with "
        "several, to serve the fastest here; 0: never, serve the build host's recommendation. The desired state "
        "may override it.",
    )
    endpoints: EndpointsConfig = Field(default_factory=EndpointsConfig, description="Local HTTP endpoints.")
    mining: MiningConfig = Field(default_factory=MiningConfig, description="Hard-sample mining and upload.")
    device_kind: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="Which artifact targets to prefer; auto: from the detected GPU, CUDA and TensorRT."
    )

    @field_validator("batch")
    @classmethod
    def _batch(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError("batch is auto or 1-256")
        return v

    @model_validator(mode="after")
    def _unique_sources(self) -> AgentConfig:
        names = [src.name or f"cam{i}" for i, src in enumerate(self.sources)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"sources: two cameras are named {', '.join(twice)}; give each its own name")
        return self

    @model_validator(mode="after")
    def _slots(self) -> AgentConfig:
        for slot in self.slots or []:
            if not re.fullmatch(SLOT_PATTERN, slot):
                raise ValueError(f"slots: {slot!r} is not a slot name (a-z 0-9 _ -, up to 32)")
        if self.slots is not None:
            for i, src in enumerate(self.sources):
                if src.slot not in self.slots:
                    name = src.name or f"cam{i}"
                    raise ValueError(
                        f"sources: camera {name!r} feeds slot {src.slot!r}, which is not one of slots: "
                        + ", ".join(self.slots)
                    )
        return self

    def slot_names(self) -> list[str]:
        """The slots this agent serves, `default` first where it is one."""
        named = self.slots if self.slots is not None else ["default", *(s.slot for s in self.sources)]
        unique = list(dict.fromkeys(named))
        return sorted(unique, key=lambda s: (s != "default", unique.index(s)))

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        if not valid_device_id(v):
            raise ValueError("device_id must be 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit")
        return v

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any]) -> AgentConfig:
        data: dict[str, Any] = {}
        if path is not None:
            loaded = yaml.safe_load(path.read_text("utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping at the top level")
            data.update(loaded)
        if "source" in data:  # single-camera shorthand
            if "sources" in data:
                raise ValueError("give either `source` or `sources`, not both")
            data["sources"] = [data.pop("source")]
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "sources":  # --source on the command line replaces the file's cameras
                data["sources"] = list(value)
            else:
                data[key] = value
        data["sources"] = [{"uri": s} if isinstance(s, str) else s for s in data.get("sources", [])]
        cfg = cls.model_validate(data)
        names = [s.name or f"cam{i}" for i, s in enumerate(cfg.sources)]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return cfg
