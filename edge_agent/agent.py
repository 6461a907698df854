"""The agent daemon: converge to desired state, run the camera loop, report.

Threads: paho's network thread (hands desired state to a queue), the updater (one update at a time,
latest desired wins), the capture and inference threads of the loop, and a telemetry ticker.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent import __version__, capabilities
from edge_agent.camera.loop import FrameResult, InferenceLoop
from edge_agent.camera.sources import FrameSource
from edge_agent.config import AgentConfig
from edge_agent.decoders.results import Classification
from edge_agent.endpoints import Endpoints
from edge_agent.flywheel.mining import Mining
from edge_agent.protocol.messages import (
    BoardTelemetry,
    DesiredState,
    DetectionEvent,
    MeasuredTargets,
    MeasureSpec,
    MessageError,
    Prediction,
    ReportedState,
    ShadowTelemetry,
    SlotReport,
    SourceTelemetry,
    StatusMessage,
    Telemetry,
    UpdateStateName,
    decode_message,
    encode_message,
)
from edge_agent.protocol.messages import Deployment as DeploymentMsg
from edge_agent.protocol.topics import DeviceTopics
from edge_agent.runtimes import RuntimeError_
from edge_agent.tegrastats import TegraStats
from edge_agent.transport.mqtt import MqttTransport, Will
from edge_agent.update.checks import ManifestRejected, check_manifest
from edge_agent.update.download import sha256_file
from edge_agent.update.installer import Installer
from edge_agent.update.machine import Record, StepFailed, UpdateMachine
from edge_agent.update.states import State
from edge_agent.update.trust import TrustStore

log = logging.getLogger(__name__)


def predictions(result: Any, classes: tuple[str, ...], limit: int = 20) -> list[Prediction]:
    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else str(i)

    if isinstance(result, Classification):
        return [Prediction(label=name(i), score=round(s, 4)) for i, s in result.topk(1)]
    out = []
    for k in range(min(len(result), limit)):
        box = tuple(round(float(v), 1) for v in result.xyxy[k])
        out.append(Prediction(label=name(int(result.class_ids[k])), score=round(float(result.scores[k]), 4), box=box))
    return out


class Agent:
    SLOT = "default"

    def __init__(self, config: AgentConfig) -> None:
        self.cfg = config
        self.data_dir = config.data_dir
        self.topics = DeviceTopics(config.device_id)
        self.caps = capabilities.detect()
        if config.endpoints.enabled and config.endpoints.advertise_url:
            self.caps.preview_url = config.endpoints.advertise_url.rstrip("/") + "/preview"
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
            )
            for i, src in enumerate(config.sources)
        ]
        self.loop = InferenceLoop(
            self.sources,
            sinks=[self._event_sink],
            batch=len(self.sources) if config.batch == "auto" else config.batch,
            gather_ms=config.gather_ms,
            auto_batch=config.batch == "auto",
        )
        self.mining = Mining(
            self.loop, self.data_dir / "spool", config.server_url, config.device_id,
            config.token.get_secret_value(), self._classes_of, config.mining,
        )  # fmt: skip
        self._shadow_job: dict[str, Any] | None = None
        self.endpoints: Endpoints | None = None
        self._shadow_reason: str | None = None
        self._stop = threading.Event()
        self.installer = Installer(config, self.caps, self.device_kind, self.loop, self.trust, self._stop, self._report)
        self.machine = UpdateMachine(self.data_dir / "update.json", steps=self.installer, on_change=self._on_state)
        self._desired: queue.Queue[DesiredState] = queue.Queue(maxsize=1)
        self._threads: list[threading.Thread] = []
        self._last_event: tuple[float, tuple[str, ...]] = (0.0, ())
        self._startup_error: str | None = None
        self.board = TegraStats()  # a Jetson's power, thermal and GPU load; idle elsewhere

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Agent:
        (self.data_dir / "models").mkdir(parents=True, exist_ok=True)
        self._load_current()
        for src in self.sources:
            src.start()
        self.loop.start()
        self.board.start()
        self.mining.start()
        self.transport.subscribe(self.topics.desired, self._on_desired, qos=1)
        self.transport.start()
        if self.cfg.endpoints.enabled:
            ep = self.cfg.endpoints
            self.endpoints = Endpoints(
                self.loop, lambda: {"state": self.machine.state.value}, ep.host, ep.port, ep.preview_fps
            ).start()
        for name, target in (("updater", self._updater), ("telemetry", self._telemetry)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info(
            "agent %s started (%d source(s), server %s)", self.cfg.device_id, len(self.sources), self.cfg.server_url
        )
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
            self.loop.stop()
            self.board.stop()
            self.mining.stop()
            for src in self.sources:
                src.stop()
            for t in self._threads:
                t.join(1.0)

    def _load_current(self) -> None:
        """Serve the last committed model (re-verified from disk) before anything else happens."""
        job = self.machine.record.current
        if not job:
            return
        try:
            path = Path(job["path"])
            if sha256_file(path) != job["sha256"]:
                raise StepFailed(f"installed artifact {path.name} no longer matches its sha256")
            self.loop.swap(self.installer.load(job))
        except (OSError, StepFailed, RuntimeError_) as exc:
            self._startup_error = f"cannot load committed model {job.get('model')}:{job.get('version')}: {exc}"
            log.error("%s", self._startup_error)

    # -- desired state -----------------------------------------------------------------------
    def _on_desired(self, topic: str, payload: bytes) -> None:
        try:
            msg = decode_message(payload, DesiredState, expect_device=self.cfg.device_id)
        except MessageError as exc:
            log.warning("ignored desired state on %s: %s", topic, exc)
            return
        while True:  # latest wins
            try:
                self._desired.put_nowait(msg)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._desired.get_nowait()

    def _updater(self) -> None:
        self.machine.resume()
        self._report()
        while not self._stop.is_set():
            try:
                msg = self._desired.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._apply(msg)
            except Exception:
                log.exception("applying desired revision %s failed", msg.revision)

    def _apply(self, msg: DesiredState) -> None:
        if msg.mining is not None:
            self.mining.apply(msg.mining)
        rec = self.machine.record
        # a revision already handled is skipped, unless it was refused: a forged message must not squat the
        # revision number the server's real one will carry (revisions are not signed, manifests are); and
        # unless nothing serves (the committed artifact failed its check at start): then it is installed again
        handled = rec.job is not None and rec.job.get("revision") == msg.revision and not rec.job.get("refused")
        if handled and (self.loop.model is not None or self.machine.busy):
            self._report()
            return
        dep = next((d for d in msg.deployments if d.slot == self.SLOT), None)
        for other in msg.deployments:
            if other.slot != self.SLOT:
                log.warning("slot %r ignored: this agent serves one slot (%r)", other.slot, self.SLOT)
        if dep is None:
            return
        self._apply_main(msg, dep)
        if self.loop.model is not None and self.machine.state is State.COMMITTED:
            self._apply_shadow(dep)

    def _apply_main(self, msg: DesiredState, dep: DeploymentMsg) -> None:
        rec = self.machine.record
        job: dict[str, Any] = {
            "revision": msg.revision,
            "slot": dep.slot,
            "health_window_s": dep.health_window_s,
            "min_fps_ratio": dep.min_fps_ratio,
        }
        try:
            shown = dep.manifest.unverified_manifest()  # for the report only; trusted after check_manifest
            job.update(model=shown.model, version=shown.version)
        except ValueError:
            pass
        try:
            ok = check_manifest(
                dep.manifest,
                self.cfg.root_public_key,
                self.trust,
                __version__,
                self.caps.runtimes,
                self.device_kind,
                device_id=self.cfg.device_id,
                revision=msg.revision,
            )
        except ManifestRejected as exc:
            log.warning("refused %s:%s: %s", job.get("model"), job.get("version"), exc)
            self.machine.refuse({**job, "refused": True}, str(exc))
            return
        m = ok.manifest
        cur = rec.current
        shas = {a.sha256 for a in m.artifacts.values()}
        same = cur and (cur.get("model"), cur.get("version")) == (m.model, m.version) and cur.get("sha256") in shas
        if same and self.loop.model is not None:
            self.machine.adopt_revision(msg.revision)
            self._report()
            return
        target, candidates, choice = self.installer.plan(m, ok.target, dep.measure or MeasureSpec())
        job.update(
            model=m.model,
            version=m.version,
            rollback=m.rollback,
            manifest=dep.manifest.model_dump(mode="json"),
            candidates={t: self.installer.artifact(m, t) for t in candidates},
            measure_budget_s=self.cfg.measure_budget_s
            if (dep.measure is None or dep.measure.budget_s is None)
            else dep.measure.budget_s,
            choice=choice,
        )
        job.update(target=target, **job["candidates"][target])
        self.machine.start(job)

    # -- update steps (called by UpdateMachine) ----------------------------------------------
    def _apply_shadow(self, dep: DeploymentMsg) -> None:
        """Run (or stop) a candidate beside the serving model. Never touches what serves or is trusted."""
        spec = dep.shadow
        if spec is None:
            old = self.loop.set_shadow(None)
            if old is not None:
                old.model.runtime.close()
                log.info("shadow %s stopped", old.model.ref)
            self._shadow_job, self._shadow_reason = None, None
            self._report()
            return
        try:
            ok = check_manifest(
                spec.manifest,
                self.cfg.root_public_key,
                self.trust,
                __version__,
                self.caps.runtimes,
                self.device_kind,
            )
            m, entry = ok.manifest, ok.manifest.artifacts[ok.target]  # type: ignore[index]
            if self._shadow_job and self._shadow_job["sha256"] == entry.sha256 and self.loop.shadow:
                self.loop.shadow.share = spec.share
                return
            job = {
                "model": m.model,
                "version": m.version,
                "target": ok.target,
                "url": entry.url,
                "sha256": entry.sha256,
                "length": entry.length,
                "manifest": spec.manifest.model_dump(mode="json"),
                "path": str(self.data_dir / "models" / m.model / str(m.version) / f"{ok.target}.onnx"),
            }
            self.installer.download(job)
            self.installer.check_sha(job)
            loaded = self.installer.load(job)
        except (ManifestRejected, StepFailed, RuntimeError_) as exc:
            self._shadow_reason = str(exc)
            log.warning("shadow candidate refused: %s", exc)
            self._report()
            return
        old = self.loop.set_shadow(loaded, spec.share)
        if old is not None:
            old.model.runtime.close()
        self._shadow_job, self._shadow_reason = job, None
        log.info("shadow %s running on %.0f%% of frames", loaded.ref, spec.share * 100)
        self._report()

    # -- reporting ---------------------------------------------------------------------------
    def _on_state(self, record: Record) -> None:
        self._report()

    def _report(self) -> None:
        rec = self.machine.record
        serving = self.loop.model
        job = rec.job or {}
        reason = rec.reason or (self._startup_error if rec.state is not State.ACTIVE else None)
        slot = SlotReport(
            target=serving.target if serving else None,
            detail=self.installer.detail if self.machine.busy else None,
            measured=self._measured(job) or self._measured(rec.current or {}),
            model=serving.manifest.model if serving else job.get("model"),
            version=serving.manifest.version if serving else None,
            state=UpdateStateName(rec.state.value),
            target_version=job.get("version"),
            reason=reason,
            shadow_model=self.loop.shadow.model.manifest.model if self.loop.shadow else None,
            shadow_version=self.loop.shadow.model.manifest.version if self.loop.shadow else None,
            shadow_reason=self._shadow_reason,
        )
        msg = ReportedState(
            device_id=self.cfg.device_id,
            revision=int(job.get("revision", 0)),
            slots={self.SLOT: slot},
            capabilities=self.caps,
        )
        self.transport.publish(self.topics.reported, encode_message(msg), qos=1, retain=True)

    def _measured(self, job: dict[str, Any]) -> MeasuredTargets | None:
        choice = job.get("choice")
        if not choice or job.get("refused") or "version" not in job:
            return None
        return MeasuredTargets(
            model=job["model"],
            version=job["version"],
            hardware_key=self.caps.hardware_key or "unknown",
            timings=choice["timings"],
            chosen=choice["chosen"],
            reason=choice["reason"][:500],
        )

    def _telemetry(self) -> None:
        while not self._stop.wait(self.cfg.telemetry_interval_s):
            self.machine.save_pending()  # an update state a full disk refused, saved once there is room
            model = self.loop.model
            last = self.loop.last_result
            preds = predictions(last.result, model.manifest.classes) if (last and model) else []
            per_source = [SourceTelemetry(**s) for s in self.loop.per_source()]
            down = [s for s in per_source if not s.ok]
            sh = self.loop.shadow
            shadow = (
                ShadowTelemetry(
                    model=sh.model.manifest.model,
                    version=sh.model.manifest.version,
                    frames=sh.frames,
                    agreement=sh.agreement,
                    skipped=sh.skipped,
                    errors=sh.errors,
                )
                if sh
                else None
            )
            msg = Telemetry(
                device_id=self.cfg.device_id,
                model=model.manifest.model if model else None,
                version=model.manifest.version if model else None,
                frames=self.loop.stats.frames,
                dropped=sum(s.dropped for s in self.sources),
                errors=self.loop.stats.errors,
                source_ok=not down,
                source_error="; ".join(f"{s.name}: {s.error or 'not connected'}" for s in down)[:500] or None,
                last_prediction=preds,
                queue_depth=self.loop.queue_depth(),
                sources=per_source,
                shadow=shadow,
                flywheel=self.mining.counters(),
                batch_sizes={str(k): v for k, v in sorted(self.loop.batch_sizes.items())} or None,
                board=BoardTelemetry(**self.board.latest) if self.board.latest else None,
                runtime_fallback=model.fallback if model else None,
                **self.loop.stats.snapshot(),
            )
            self.transport.publish(self.topics.telemetry, encode_message(msg), qos=0)

    def _classes_of(self, model: str, version: int) -> tuple[str, ...]:
        for lm in (self.loop.model, self.loop.shadow.model if self.loop.shadow else None, self.installer.previous):
            if lm is not None and lm.manifest.model == model and lm.manifest.version == version:
                return lm.manifest.classes
        return ()

    def _event_sink(self, fr: FrameResult) -> None:
        """Publish a detection event when what is seen changes (at most twice a second)."""
        model = self.loop.model
        if model is None:
            return
        preds = predictions(fr.result, model.manifest.classes)
        labels = tuple(sorted(p.label for p in preds))
        now = time.monotonic()
        last_t, last_labels = self._last_event
        if labels == last_labels or now - last_t < 0.5:
            return
        self._last_event = (now, labels)
        ev = DetectionEvent(
            device_id=self.cfg.device_id,
            source=fr.source,
            model=fr.model,
            version=fr.version,
            frame=fr.frame_index,
            predictions=preds,
        )
        self.transport.publish(self.topics.events, encode_message(ev), qos=1)
