"""The agent daemon: converge to desired state, run each slot's camera loop, report.

Threads: paho's network thread (hands desired state to each slot's queue), one updater per slot (one update
at a time, latest desired wins), the capture and inference threads of each slot's loop, and a telemetry
ticker. A slot is one model with its own cameras and update state (edge_agent/slot.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from edge_agent import capabilities
from edge_agent.camera.loop import InferenceLoop
from edge_agent.camera.sources import FrameSource
from edge_agent.config import AgentConfig
from edge_agent.endpoints import Endpoints
from edge_agent.flywheel.mining import Mining
from edge_agent.protocol.messages import (
    BoardTelemetry,
    DesiredState,
    DetectionEvent,
    MessageError,
    ReportedState,
    SlotReport,
    StatusMessage,
    UpdateStateName,
    decode_message,
    encode_message,
)
from edge_agent.protocol.topics import DeviceTopics
from edge_agent.slot import ModelSlot, predictions
from edge_agent.tegrastats import TegraStats
from edge_agent.transport.mqtt import MqttTransport, Will
from edge_agent.update.installer import Installer
from edge_agent.update.machine import UpdateMachine
from edge_agent.update.trust import TrustStore

log = logging.getLogger(__name__)
__all__ = ["Agent", "predictions"]


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.cfg = config
        self.data_dir = config.data_dir
        self.topics = DeviceTopics(config.device_id)
        self.caps = capabilities.detect()
        if config.endpoints.enabled and config.endpoints.advertise_url:
            self.caps.preview_url = config.endpoints.advertise_url.rstrip("/") + "/preview"
        self.caps.slots = config.slot_names()
        self.device_kind = capabilities.device_kind(self.caps) if config.device_kind == "auto" else config.device_kind
        self.trust = TrustStore(self.data_dir / "trust.json")
        token = config.token.get_secret_value()
        offline = encode_message(StatusMessage(device_id=config.device_id, status="offline"))
        online = encode_message(StatusMessage(device_id=config.device_id, status="online"))
        self.transport = MqttTransport(
            config.mqtt_url,
            client_id=f"edgeloop-agent-{config.device_id}",
            username=config.device_id,
            password=token,
            will=Will(self.topics.status, offline),
            on_connect=[(self.topics.status, online, 1, True)],
            ca_pem=config.mqtt_ca,
            keepalive=config.mqtt_keepalive_s,
        )
        self.sources = [
            FrameSource(
                src.uri,
                src.loop_file,
                src.pace_file,
                src.stall_timeout_s,
                name=src.name or f"cam{i}",
                decode_threads=src.decode_threads,
                decode=src.decode,
                gpu=self.caps.gpu is not None,
                jetson=self.caps.jetson_l4t is not None,
                codec=src.codec,
            )
            for i, src in enumerate(config.sources)
        ]
        self._configured = {s.name: c.slot for s, c in zip(self.sources, config.sources, strict=True)}
        self._stop = threading.Event()
        self._boot, self._report_seq, self._report_lock = uuid.uuid4().hex[:12], 0, threading.Lock()
        self.slots = {
            name: ModelSlot(
                name, config, self.caps, self.device_kind, self.trust,
                [s for s in self.sources if self._configured[s.name] == name],
                self._stop, self._report, self._publish_event, batch_ceiling=len(self.sources),
            )
            for name in config.slot_names()
        }  # fmt: skip
        self._main = next(iter(self.slots.values()))  # `default` where there is one: mining and /preview watch it
        self.mining = Mining(
            self.loop, self.data_dir / "spool", config.server_url, config.device_id,
            config.token.get_secret_value(), self._classes_of, config.mining,
        )  # fmt: skip
        self.endpoints: Endpoints | None = None
        self._refused: dict[str, SlotReport] = {}  # slots the desired state names that this agent cannot serve
        self._threads: list[threading.Thread] = []
        self.board = TegraStats()  # a Jetson's power, thermal and GPU load; idle elsewhere

    # the default (first) slot's parts, as a one-slot agent had them
    @property
    def loop(self) -> InferenceLoop:
        return self._main.loop

    @property
    def installer(self) -> Installer:
        return self._main.installer

    @property
    def machine(self) -> UpdateMachine:
        return self._main.machine

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Agent:
        for src in self.sources:
            src.start()
        for slot in self.slots.values():
            slot.start()
        self.board.start()
        self.mining.start()
        self.transport.subscribe(self.topics.desired, self._on_desired, qos=1)
        self.transport.start()
        if self.cfg.endpoints.enabled:
            ep = self.cfg.endpoints
            self.endpoints = Endpoints(
                self.loop, lambda: {"state": self.machine.state.value}, ep.host, ep.port, ep.preview_fps
            ).start()
        t = threading.Thread(target=self._telemetry, name="telemetry", daemon=True)
        t.start()
        self._threads.append(t)
        log.info(
            "agent %s started (%d source(s), slot(s) %s, server %s)",
            self.cfg.device_id, len(self.sources), ", ".join(self.slots), self.cfg.server_url,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            offline = encode_message(StatusMessage(device_id=self.cfg.device_id, status="offline"))
            self.transport.publish(self.topics.status, offline, qos=1, retain=True)
            time.sleep(0.1)
        finally:
            self.transport.stop()
            if self.endpoints is not None:
                self.endpoints.stop()
            for slot in self.slots.values():
                slot.stop()
            self.board.stop()
            self.mining.stop()
            for src in self.sources:
                src.stop()
            for t in self._threads:
                t.join(1.0)

    # -- desired state (paho's network thread) ------------------------------------------------
    def _on_desired(self, topic: str, payload: bytes) -> None:
        try:
            msg = decode_message(payload, DesiredState, expect_device=self.cfg.device_id)
        except MessageError as exc:
            log.warning("ignored desired state on %s: %s", topic, exc)
            return
        if msg.mining is not None:
            self.mining.apply(msg.mining)
        self._assign(msg)
        for slot in self.slots.values():
            slot.offer(msg)

    def _assign(self, msg: DesiredState) -> None:
        """Refuse deployments to slots this agent lacks, naming both; give each slot the cameras the desired
        state names for it (the rest stay where agent.yaml put them)."""
        refused: dict[str, SlotReport] = {}
        owner = dict(self._configured)
        for dep in msg.deployments:
            try:
                shown = dep.manifest.unverified_manifest()  # named in the refusal only
                what: tuple[str | None, int | None] = (shown.model, shown.version)
            except ValueError:
                what = (None, None)
            reason = None
            unknown = [c for c in dep.sources or [] if c not in owner]
            if dep.slot not in self.slots:
                reason = f"slot {dep.slot!r} does not exist on this device (it has: {', '.join(self.slots)})"
            elif unknown:
                reason = f"slot {dep.slot!r}: no camera named {', '.join(unknown)} (cameras: {', '.join(owner)})"
            if reason is not None:
                log.warning("refused %s:%s: %s", *what, reason)
                refused[dep.slot] = SlotReport(
                    model=what[0], target_version=what[1], state=UpdateStateName.failed, reason=reason
                )
                continue
            for cam in dep.sources or []:
                owner[cam] = dep.slot
        for name, slot in self.slots.items():
            want = [s for s in self.sources if owner[s.name] == name]
            if [s.name for s in want] != [s.name for s in slot.loop.sources]:
                log.info("slot %s serves camera(s) %s", name, ", ".join(s.name for s in want) or "none")
                slot.loop.set_sources(want)
        self._refused = refused
        if refused:
            self._report()

    # -- reporting ---------------------------------------------------------------------------
    def _report(self) -> None:
        with self._report_lock:  # slots report from their own threads: numbered in the order they are sent
            self._report_seq += 1
            slots = {**self._refused, **{name: slot.report() for name, slot in self.slots.items()}}
            msg = ReportedState(
                device_id=self.cfg.device_id,
                revision=max(slot.revision for slot in self.slots.values()),
                boot=self._boot,
                seq=self._report_seq,
                slots=slots,
                capabilities=self.caps,
            )
            self.transport.publish(self.topics.reported, encode_message(msg), qos=1, retain=True)

    def _publish_event(self, ev: DetectionEvent) -> None:
        self.transport.publish(self.topics.events, encode_message(ev), qos=1)

    def _telemetry(self) -> None:
        while not self._stop.wait(self.cfg.telemetry_interval_s):
            for slot in self.slots.values():
                slot.machine.save_pending()  # an update state a full disk refused, saved once there is room
                device_wide: dict[str, Any] = {}
                if slot is self._main:
                    board = BoardTelemetry(**self.board.latest) if self.board.latest else None
                    device_wide = {"flywheel": self.mining.counters(), "board": board}
                msg = slot.telemetry(**device_wide)
                self.transport.publish(self.topics.telemetry, encode_message(msg), qos=0)

    def _classes_of(self, model: str, version: int) -> tuple[str, ...]:
        for slot in self.slots.values():
            classes = slot.classes_of(model, version)
            if classes:
                return classes
        return ()
