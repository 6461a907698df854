"""One model slot of an agent: its cameras, its model, and its own update machine, health window, shadow and
rollback. An agent serves every slot its desired state names and agent.yaml lists (see agent.py); slots
share the device's execution providers and trust store, never a model or an update.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.camera.loop import FrameResult, InferenceLoop
from edge_agent.camera.sources import FrameSource
from edge_agent.config import AgentConfig
from edge_agent.decoders.results import Classification
from edge_agent.protocol.messages import (
    Capabilities,
    DesiredState,
    DetectionEvent,
    MeasuredTargets,
    MeasureSpec,
    Prediction,
    ShadowTelemetry,
    SlotReport,
    SourceTelemetry,
    Telemetry,
    UpdateStateName,
)
from edge_agent.protocol.messages import Deployment as DeploymentMsg
from edge_agent.runtimes import RuntimeError_
from edge_agent.update.checks import ManifestRejected, check_manifest
from edge_agent.update.download import sha256_file
from edge_agent.update.installer import Installer
from edge_agent.update.job import Job, serve
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


def slot_paths(data_dir: Path, slot: str) -> tuple[Path, Path]:
    """(update state file, models folder). The default slot keeps the paths of a one-slot agent, so an agent
    upgraded in place serves its committed model on first start."""
    if slot == "default":
        return data_dir / "update.json", data_dir / "models"
    return data_dir / "slots" / slot / "update.json", data_dir / "slots" / slot / "models"


class ModelSlot:
    def __init__(
        self,
        name: str,
        cfg: AgentConfig,
        caps: Capabilities,
        device_kind: str,
        trust: TrustStore,
        sources: list[FrameSource],
        stop: threading.Event,
        report: Callable[[], None],
        publish_event: Callable[[DetectionEvent], None],
        batch_ceiling: int,
    ) -> None:
        self.name, self.cfg, self.caps, self.device_kind, self.trust = name, cfg, caps, device_kind, trust
        self._stop, self._report, self._publish_event = stop, report, publish_event
        self.loop = InferenceLoop(
            sources,
            sinks=[self._event_sink],
            batch=batch_ceiling if cfg.batch == "auto" else cfg.batch,
            gather_ms=cfg.gather_ms,
            auto_batch=cfg.batch == "auto",
        )
        state_path, models_dir = slot_paths(cfg.data_dir, name)
        models_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir = models_dir
        self.installer = Installer(cfg, caps, device_kind, self.loop, trust, stop, report, models_dir=models_dir)
        self.machine = UpdateMachine(state_path, steps=self.installer, on_change=self._on_state)
        self._desired: queue.Queue[DesiredState] = queue.Queue(maxsize=1)
        self._shadow_job: Job | None = None
        self._shadow_reason: str | None = None
        self.startup_error: str | None = None
        self._last_event: tuple[float, tuple[str, ...]] = (0.0, ())
        self._thread: threading.Thread | None = None
        self._seen = 0  # the last desired revision taken from the queue

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._load_current()
        self.loop.start()
        self._thread = threading.Thread(target=self._updater, name=f"updater-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.loop.stop()
        if self._thread is not None:
            self._thread.join(1.0)

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
            self.startup_error = f"cannot load committed model {job.get('model')}:{job.get('version')}: {exc}"
            log.error("slot %s: %s", self.name, self.startup_error)

    # -- desired state -----------------------------------------------------------------------
    def offer(self, msg: DesiredState) -> None:
        """Hand a desired state to this slot's updater; the latest wins (called on the network thread)."""
        while True:
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
                log.exception("slot %s: applying desired revision %s failed", self.name, msg.revision)

    def _apply(self, msg: DesiredState) -> None:
        rec = self.machine.record
        dep = next((d for d in msg.deployments if d.slot == self.name), None)
        self._seen = msg.revision
        if dep is None:
            return
        # this slot's deployment, already handled, is skipped (a change to another slot or to mining does not
        # retry a failed update here); unless it was refused: a forged message must not squat the revision
        # number the server's real one will carry (revisions are not signed, manifests are); and unless nothing
        # serves (the committed artifact failed its check at start): then it is installed again
        made_at = dep.revision if dep.revision is not None else msg.revision
        job = rec.job or {}
        handled = rec.job is not None and job.get("made_at", job.get("revision")) == made_at and not job.get("refused")
        if handled and (self.loop.model is not None or self.machine.busy):
            self._report()
            return
        self._apply_main(msg, dep, made_at)
        if self.loop.model is not None and self.machine.state is State.COMMITTED:
            self._apply_shadow(dep)

    def _apply_main(self, msg: DesiredState, dep: DeploymentMsg, made_at: int) -> None:
        rec = self.machine.record
        job: Job = {
            "revision": msg.revision,
            "made_at": made_at,
            "slot": dep.slot,
            "health_window_s": dep.health_window_s,
            "min_fps_ratio": dep.min_fps_ratio,
        }
        try:
            shown = dep.manifest.unverified_manifest()  # for the report only; trusted after check_manifest
            job["model"], job["version"] = shown.model, shown.version
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
                revision=made_at,  # a rollback is signed for the revision its deployment was made at
            )
        except ManifestRejected as exc:
            log.warning("slot %s: refused %s:%s: %s", self.name, job.get("model"), job.get("version"), exc)
            job["refused"] = True
            self.machine.refuse(job, str(exc))
            return
        m = ok.manifest
        cur = rec.current
        shas = {a.sha256 for a in m.artifacts.values()}
        same = cur and (cur.get("model"), cur.get("version")) == (m.model, m.version) and cur.get("sha256") in shas
        if same and self.loop.model is not None:
            self.machine.adopt_revision(msg.revision, made_at=made_at)
            self._report()
            return
        target, candidates, choice = self.installer.plan(m, ok.target, dep.measure or MeasureSpec())
        budget = dep.measure.budget_s if dep.measure is not None else None
        job["model"], job["version"], job["rollback"] = m.model, m.version, m.rollback
        job["manifest"] = dep.manifest.model_dump(mode="json")
        job["candidates"] = {t: self.installer.artifact(m, t) for t in candidates}
        job["measure_budget_s"] = self.cfg.measure_budget_s if budget is None else budget
        job["choice"] = choice
        serve(job, target, job["candidates"][target])
        self.machine.start(job)

    def _apply_shadow(self, dep: DeploymentMsg) -> None:
        """Run (or stop) a candidate beside the serving model. Never touches what serves or is trusted."""
        spec = dep.shadow
        if spec is None:
            old = self.loop.set_shadow(None)
            if old is not None:
                old.model.runtime.close()
                log.info("slot %s: shadow %s stopped", self.name, old.model.ref)
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
            job: Job = {
                "model": m.model,
                "version": m.version,
                "target": ok.target,
                "url": entry.url,
                "sha256": entry.sha256,
                "length": entry.length,
                "manifest": spec.manifest.model_dump(mode="json"),
                "path": str(self.models_dir / m.model / str(m.version) / f"{ok.target}.onnx"),
            }
            self.installer.download(job)
            self.installer.check_sha(job)
            loaded = self.installer.load(job)
        except (ManifestRejected, StepFailed, RuntimeError_) as exc:
            self._shadow_reason = str(exc)
            log.warning("slot %s: shadow candidate refused: %s", self.name, exc)
            self._report()
            return
        old = self.loop.set_shadow(loaded, spec.share)
        if old is not None:
            old.model.runtime.close()
        self._shadow_job, self._shadow_reason = job, None
        log.info("slot %s: shadow %s running on %.0f%% of frames", self.name, loaded.ref, spec.share * 100)
        self._report()

    # -- reporting ---------------------------------------------------------------------------
    def _on_state(self, record: Record) -> None:
        self._report()

    @property
    def revision(self) -> int:
        """The last desired revision this slot acted on (doing nothing is acting on it too)."""
        return self._seen or int((self.machine.record.job or {}).get("revision", 0))

    def report(self) -> SlotReport:
        rec = self.machine.record
        serving = self.loop.model
        job = rec.job or {}
        reason = rec.reason or (self.startup_error if rec.state is not State.ACTIVE else None)
        shadow = self.loop.shadow
        return SlotReport(
            target=serving.target if serving else None,
            detail=self.installer.detail if self.machine.busy else None,
            measured=self._measured(job) or self._measured(rec.current or {}),
            model=serving.manifest.model if serving else job.get("model"),
            version=serving.manifest.version if serving else None,
            state=UpdateStateName(rec.state.value),
            target_version=job.get("version"),
            reason=reason,
            shadow_model=shadow.model.manifest.model if shadow else None,
            shadow_version=shadow.model.manifest.version if shadow else None,
            shadow_reason=self._shadow_reason,
            sources=[s.name for s in self.loop.sources],
        )

    def _measured(self, job: Job) -> MeasuredTargets | None:
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

    def telemetry(self, **extra: Any) -> Telemetry:
        """This slot's telemetry: its model, its cameras, its batches (`extra`: the device-wide parts)."""
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
        return Telemetry(
            device_id=self.cfg.device_id,
            slot=self.name,
            model=model.manifest.model if model else None,
            version=model.manifest.version if model else None,
            frames=self.loop.stats.frames,
            dropped=sum(s.dropped for s in self.loop.sources),
            errors=self.loop.stats.errors,
            source_ok=not down,
            source_error="; ".join(f"{s.name}: {s.error or 'not connected'}" for s in down)[:500] or None,
            last_prediction=preds,
            queue_depth=self.loop.queue_depth(),
            sources=per_source,
            shadow=shadow,
            batch_sizes={str(k): v for k, v in sorted(self.loop.batch_sizes.items())} or None,
            runtime_fallback=model.fallback if model else None,
            **extra,
            **self.loop.stats.snapshot(),
        )

    def classes_of(self, model: str, version: int) -> tuple[str, ...]:
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
        self._publish_event(
            DetectionEvent(
                device_id=self.cfg.device_id,
                slot=self.name,
                source=fr.source,
                model=fr.model,
                version=fr.version,
                frame=fr.frame_index,
                predictions=preds,
            )
        )
