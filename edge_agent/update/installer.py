"""Installing one model version on the device: the update machine's steps (download, verify, prepare, warm,
activate and watch, commit, rollback) and the plan of which artifact targets to fetch and time.

The agent decides *what* to install (desired state, manifest checks); this decides *how*: which targets
this hardware can run, which to fetch, timing them (update/measure.py) and swapping the chosen one in
between two frames, with the previous model kept until the health window passes.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.camera.loop import InferenceLoop, LoadedModel
from edge_agent.config import AgentConfig
from edge_agent.decoders.base import decoder_for
from edge_agent.preprocess import Preprocessor, Transform
from edge_agent.protocol.manifest import Manifest
from edge_agent.protocol.messages import Capabilities, MeasureSpec
from edge_agent.protocol.signing import SignedManifest
from edge_agent.runtimes import RuntimeError_, create_runtime
from edge_agent.runtimes.base import extract_trt_calibration, trt_quantization
from edge_agent.update.checks import runnable_targets
from edge_agent.update.download import DownloadError, download, resolve_url, sha256_file
from edge_agent.update.job import ArtifactRef, Job, artifact_of, serve
from edge_agent.update.machine import StepFailed
from edge_agent.update.measure import Timing, choose, time_runs
from edge_agent.update.trust import TrustStore

log = logging.getLogger(__name__)


class Installer:
    """The `Steps` of the update machine for one device (see update/machine.py)."""

    def __init__(
        self,
        cfg: AgentConfig,
        caps: Capabilities,
        device_kind: str,
        loop: InferenceLoop,
        trust: TrustStore,
        stop_event: threading.Event,
        report: Callable[[], None],
        models_dir: Path | None = None,
    ) -> None:
        self.cfg, self.caps, self.device_kind = cfg, caps, device_kind
        self.data_dir = cfg.data_dir
        self.models_dir = models_dir or cfg.data_dir / "models"  # one folder per slot: no slot prunes another's
        self.loop, self.trust = loop, trust
        self.stop_event, self.report = stop_event, report
        self.candidate: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self.detail: str | None = None  # what the running step is doing, for the reported state

    def artifact(self, m: Manifest, target: str) -> ArtifactRef:
        entry = m.artifacts[target]  # type: ignore[index]
        path = self.models_dir / m.model / str(m.version) / f"{target}.onnx"
        return {"url": entry.url, "sha256": entry.sha256, "length": entry.length, "path": str(path)}

    def plan(self, m: Manifest, static: str, spec: MeasureSpec) -> tuple[str, list[str], dict[str, Any] | None]:
        """(the target to start from, the targets to fetch and time, the choice when already made)."""
        runnable = runnable_targets(m, self.device_kind)
        budget = self.cfg.measure_budget_s if spec.budget_s is None else spec.budget_s
        if spec.prefer in runnable and spec.prefer is not None:
            why = f"measured best on this hardware with {spec.prefer_from or 'an earlier version'}; not timed again"
            return spec.prefer, [spec.prefer], {"chosen": spec.prefer, "reason": why, "timings": []}
        if budget > 0 and len(runnable) > 1:
            return static, runnable, None
        why = (
            "the only target this device runs"
            if len(runnable) <= 1
            else "not measured (budget 0): the build host's choice"
        )
        return static, [static], {"chosen": static, "reason": why, "timings": []}

    def download(self, job: Job) -> None:
        for entry in (job.get("candidates") or {"": artifact_of(job)}).values():
            self.download_one(entry)

    def download_one(self, job: ArtifactRef) -> None:
        path = Path(job["path"])
        if path.exists() and path.stat().st_size == job["length"]:
            if sha256_file(path) == job["sha256"]:
                return  # fetched before a restart
            log.warning("%s on disk does not match its sha256: fetching it again", path.name)
            path.unlink()
        url = resolve_url(self.cfg.server_url, job["url"])
        deadline = time.monotonic() + self.cfg.download_retry_s
        delay = 1.0
        while True:
            try:
                download(
                    url,
                    path,
                    job["length"],
                    job["sha256"],
                    token=self.cfg.token.get_secret_value(),
                    token_origin=self.cfg.server_url,
                )
                return
            except DownloadError as exc:
                if not exc.transient or time.monotonic() + delay > deadline or self.stop_event.is_set():
                    raise StepFailed(f"download: {exc}") from exc
                log.warning("download failed (%s); retrying in %.0fs", exc, delay)
                self.stop_event.wait(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, 30.0)

    def check_sha(self, job: ArtifactRef | Job) -> None:
        path = Path(job["path"])
        got = sha256_file(path)
        if got != job["sha256"]:
            path.unlink(missing_ok=True)
            raise StepFailed(f"sha256 mismatch: manifest says {job['sha256'][:16]}…, artifact is {got[:16]}…")

    def verify(self, job: Job) -> None:
        for entry in (job.get("candidates") or {"": artifact_of(job)}).values():
            self.check_sha(entry)
        if job.get("rollback"):
            self.trust.lower_to(job["model"], job["version"])
        else:
            self.trust.record(job["model"], job["version"])

    def prepare(self, job: Job) -> None:
        """A TensorRT engine is built here, before it is needed (minutes on a Jetson), and cached under
        (artifact sha256, TensorRT version, GPU, precision): the warm step then loads it in seconds. The
        reported state says so meanwhile (`detail`). ONNX artifacts for other providers need nothing."""
        entry = (job.get("candidates") or {}).get("tensorrt")
        if entry is None or self.device_kind != "tensorrt":
            return
        manifest: Manifest = SignedManifest.model_validate(job["manifest"]).unverified_manifest()
        self._say(f"building the TensorRT engine for {manifest.ref}")
        t0 = time.monotonic()
        try:
            self._open("tensorrt", Path(entry["path"]), entry["sha256"], manifest).close()
        except RuntimeError_ as exc:
            raise StepFailed(f"TensorRT engine build: {exc}") from exc
        finally:
            self._say(None)
        log.info("TensorRT engine for %s ready in %.0f s", manifest.ref, time.monotonic() - t0)

    def _say(self, detail: str | None) -> None:
        self.detail = detail
        self.report()

    def _open(self, target: str, path: Path, sha256: str | None, manifest: Manifest) -> Any:
        opts = self.cfg.runtime.model_copy(
            update={
                "artifact_sha256": sha256,
                "cache_dir": self.data_dir / "engines",
                "precision": {"onnx-fp16": "fp16", "tensorrt": "int8"}.get(target, "fp32"),
            }
        )
        runtime_name = "tensorrt" if target == "tensorrt" and "tensorrt" in self.caps.runtimes else "onnxruntime"
        if target == "tensorrt":
            if trt_quantization(path) == "explicit":
                opts = opts.model_copy(update={"int8_explicit": True})
            else:
                cache = extract_trt_calibration(path, self.data_dir / "engines")
                opts = opts.model_copy(update={"int8_calibration": cache} if cache else {"precision": "fp16"})
        runtime = create_runtime(runtime_name, path, opts)
        if tuple(runtime.input_shape) != tuple(manifest.input.shape):
            runtime.close()
            raise StepFailed(f"model input {runtime.input_shape} differs from manifest {manifest.input.shape}")
        return runtime

    def load(self, job: Job) -> LoadedModel:
        manifest: Manifest = SignedManifest.model_validate(job["manifest"]).unverified_manifest()
        target = job.get("target", "onnx-fp32")
        runtime = self._open(target, Path(job["path"]), job.get("sha256"), manifest)
        decode = decoder_for(manifest.decoder, len(manifest.classes))
        outputs = runtime.warmup()
        h, w = manifest.input.hw
        try:
            decode(outputs, Transform(1.0, 1.0, 0.0, 0.0, w, h))
        except ValueError as exc:
            raise StepFailed(f"decoder {manifest.decoder.type}: {exc}") from exc
        return LoadedModel(manifest, runtime, Preprocessor(manifest.input), decode, target=target)

    def _measure(self, job: Job) -> None:
        """Time each candidate on a ready input, keep the chosen one (see update/measure.py)."""
        manifest: Manifest = SignedManifest.model_validate(job["manifest"]).unverified_manifest()
        budget = float(job.get("measure_budget_s") or self.cfg.measure_budget_s)
        timings: list[Timing] = []
        for i, (target, entry) in enumerate(job["candidates"].items()):
            self._say(f"timing {target} ({i + 1} of {len(job['candidates'])}, up to {budget:g} s)")
            try:
                rt = self._open(target, Path(entry["path"]), entry["sha256"], manifest)
            except (StepFailed, RuntimeError_) as exc:
                timings.append(Timing(target, error=f"load: {str(exc).splitlines()[0][:200]}"))
                continue
            try:
                x = np.zeros(rt.input_shape, rt.input_dtype)
                timings.append(time_runs(functools.partial(rt.run, x), budget, target))
            finally:
                rt.close()
        self._say(None)
        deltas: dict[str, float | None] = {t: a.accuracy_delta for t, a in manifest.artifacts.items()}
        choice = choose(timings, deltas, fallback=job["target"])
        log.info("serving %s of %s: %s", choice.target, manifest.ref, choice.reason)
        chosen = job["candidates"][choice.target]
        for target, entry in job["candidates"].items():
            if target != choice.target:  # only what serves stays on disk
                Path(entry["path"]).unlink(missing_ok=True)
        serve(job, choice.target, chosen)
        job["candidates"] = {choice.target: chosen}  # a crash after this resumes without timing again
        job["choice"] = {"chosen": choice.target, "reason": choice.reason, "timings": [t.to_json() for t in timings]}

    def warm(self, job: Job) -> None:
        if len(job.get("candidates") or {}) > 1:
            self._measure(job)
        try:
            self.candidate = self.load(job)
        except RuntimeError_ as exc:
            raise StepFailed(f"load: {exc}") from exc

    def activate_and_watch(self, job: Job) -> None:
        cand = self.candidate
        if cand is None:
            raise StepFailed("no warmed candidate to activate")
        old_fps = self.loop.stats.fps()
        self.previous = self.loop.swap(cand)
        self.report()  # the serving version changed between two frames: say so now
        window = float(job.get("health_window_s", 10.0))
        deadline = time.monotonic() + window
        while time.monotonic() < deadline and not self.stop_event.is_set():
            h = cand.health
            if h.errors:
                raise StepFailed(f"health: {h.errors} inference error(s): {h.last_error}")
            if h.nan_outputs:
                raise StepFailed(f"health: {h.nan_outputs} frame(s) with NaN outputs")
            time.sleep(0.05)
        ratio = float(job.get("min_fps_ratio", 0.5))
        if window >= 2.0 and old_fps > 0 and ratio > 0:
            new_fps = cand.health.frames / max(1e-6, time.monotonic() - cand.health.started)
            if new_fps < ratio * old_fps:
                raise StepFailed(f"health: {new_fps:.1f} fps is below {ratio:g} × the previous model's {old_fps:.1f}")

    def commit(self, job: Job) -> None:
        if self.previous is not None:
            self.previous.runtime.close()
        self.previous, self.candidate = None, None

    def rollback(self, job: Job) -> None:
        if self.candidate is not None and self.loop.model is self.candidate:
            self.loop.swap(self.previous)
        if self.candidate is not None:
            self.candidate.runtime.close()
        self.candidate, self.previous = None, None
