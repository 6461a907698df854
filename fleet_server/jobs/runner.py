"""Runs queued jobs on this replica, one at a time, each in a worker process.

A job is claimed with a compare-and-set on its state plus a lease the runner renews while the worker
lives; the worker runs as a local process or as a Ray job (backends.py). A job whose lease lapsed (its
replica died) goes back to the queue and resumes: a training run continues from its last checkpoint, a Ray
job is re-attached to. The worker's JSON lines become the job's progress and message and
are kept in JOB_DIR/log.jsonl; on success the runner registers what the worker built (model version or
dataset version) and stores the result.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fleet_server.jobs.backends import Handle, LocalBackend, RayBackend
from fleet_server.jobs.states import MAX_ATTEMPTS, JobEvent, JobState, next_job_state
from fleet_server.jobs.tables import Job
from fleet_server.webhooks import service as webhooks
from model_zoo.objects import JobFiles

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=30)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        register: Callable[[Session, Job, dict[str, Any]], dict[str, Any]],
        jobs_dir: Path,
        name: str,
        interval_s: float = 0.5,
        periodic: Callable[[], Any] | None = None,
        periodic_s: float = 2.0,
        lease: timedelta = LEASE,
        backend: LocalBackend | RayBackend | None = None,
        files: JobFiles | None = None,
    ) -> None:
        self.files = files or JobFiles(jobs_dir.parent)  # the data root: jobs_dir is DATA_DIR/jobs
        self.lease = lease
        self.engine, self.register, self.jobs_dir, self.name = engine, register, jobs_dir, name
        self.interval_s, self.periodic, self.periodic_s = interval_s, periodic, periodic_s
        self._last_periodic = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Handle | None = None
        self.backend = backend or LocalBackend()

    def start(self) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        handle = self._handle
        if handle is not None:
            handle.detach()  # requeued: the next start resumes it (local) or re-attaches to it (Ray)
        if self._thread:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.periodic is not None and time.monotonic() - self._last_periodic > self.periodic_s:
                self._last_periodic = time.monotonic()
                try:
                    self.periodic()
                except Exception:
                    log.exception("periodic job check failed")
            try:
                job_id = self.claim()
                if job_id is not None:
                    self.execute(job_id)
            except Exception:
                log.exception("job runner step failed")

    # -- claiming ------------------------------------------------------------------------------
    def claim(self) -> int | None:
        now = _now()
        with Session(self.engine) as s:
            stale = s.exec(
                select(Job).where(Job.state == JobState.RUNNING, col(Job.lease_until) < now).order_by(col(Job.id))
            ).all()
            for j in stale:
                if j.attempts >= MAX_ATTEMPTS:
                    self._finish(s, j, JobEvent.ABANDON, error=f"abandoned after {j.attempts} attempts (worker lost)")
                else:
                    s.execute(
                        update(Job)
                        .where(col(Job.id) == j.id, col(Job.state) == JobState.RUNNING, col(Job.lease_until) < now)
                        .values(
                            state=next_job_state(JobState.RUNNING, JobEvent.LEASE_LAPSED),
                            owner=None,
                            message="requeued: its server stopped",
                        )
                    )
                    s.commit()
            for j in s.exec(select(Job).where(Job.state == JobState.QUEUED).order_by(col(Job.id)).limit(5)).all():
                res = s.execute(
                    update(Job)
                    .where(col(Job.id) == j.id, col(Job.state) == JobState.QUEUED)
                    .values(
                        state=next_job_state(JobState.QUEUED, JobEvent.CLAIM),
                        owner=self.name,
                        lease_until=now + self.lease,
                        attempts=j.attempts + 1,
                        started_at=j.started_at or now,
                    )
                )
                s.commit()
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    return int(j.id or 0)
        return None

    # -- running -------------------------------------------------------------------------------
    def job_dir(self, job_id: int) -> Path:
        return self.jobs_dir / str(job_id)

    def execute(self, job_id: int) -> None:
        with Session(self.engine) as s:
            job = s.get(Job, job_id)
            assert job is not None
            params = json.loads(job.params_json)
            kind = job.kind
        jd = self.job_dir(job_id)
        jd.mkdir(parents=True, exist_ok=True)
        (jd / "params.json").write_text(json.dumps({"kind": kind, **params}))
        self.files.put(jd / "params.json")
        (jd / "result.json").unlink(missing_ok=True)
        log.info("job %d (%s) started on %s", job_id, kind, self.backend.name)
        remote_url = params.get("storage_url") if self.files.remote is not None else None
        self._handle = handle = self.backend.launch(job_id, jd, remote_url)
        watcher = threading.Thread(target=self._watch, args=(job_id, handle), daemon=True)
        watcher.start()
        last_error = None
        with open(jd / "log.jsonl", "a") as logf:
            for line in handle.lines():
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    ev = None
                if not (isinstance(ev, dict) and ev.get("event") == "progress"):  # ticks move the row only
                    logf.write(line)
                    logf.flush()
                if not isinstance(ev, dict):
                    continue
                if ev.get("event") == "error":
                    last_error = str(ev.get("message", ""))
                self._progress(job_id, ev)
        rc = handle.returncode()
        watcher.join(2)
        self._handle = None
        self._keep_logs(jd)
        with Session(self.engine) as s:
            job = s.get(Job, job_id)
            assert job is not None
            if job.owner != self.name or job.state != JobState.RUNNING:
                return  # someone else took it over (our lease lapsed)
            if job.cancel_requested:
                self._finish(s, job, JobEvent.CANCEL, error="cancelled by request")
            elif rc != 0 and (self._stop.is_set() or rc in (-signal.SIGTERM, -signal.SIGINT)):
                # a clean stop (the server's, or a signal to the worker): not the job's fault. Back to the queue
                # now, to resume from its last checkpoint on the next start; the claim it used is given back
                job.state = next_job_state(job.state, JobEvent.LEASE_LAPSED)
                job.owner, job.lease_until = None, None
                job.attempts = max(0, job.attempts - 1)
                job.message = "requeued: its server stopped; resumes from its last checkpoint"
                s.add(job)
                s.commit()
                log.info("job %d requeued: the server is stopping", job_id)
                return
            elif rc == 0 and self._result(jd) is not None:
                try:
                    raw = self._result(jd)
                    assert raw is not None
                    result = self.register(s, job, self.files.localize(json.loads(raw.read_text())))
                except Exception as exc:  # noqa: BLE001 - the job fails with the reason, the server lives on
                    log.exception("job %d: registering its result failed", job_id)
                    s.rollback()
                    self._finish(s, job, JobEvent.FAIL, error=f"register: {exc}")
                    return
                self._finish(s, job, JobEvent.SUCCEED, result=result)
            else:
                tail = _tail(jd / "stderr.log")
                self._finish(s, job, JobEvent.FAIL, error=last_error or tail or f"worker exited with {rc}")
        log.info("job %d (%s) ended", job_id, kind)

    def _result(self, jd: Path) -> Path | None:
        """The worker's result.json: here, or in the bucket when the worker ran on another host."""
        try:
            return self.files.fetch_optional(self.files.rel(jd / "result.json"))
        except Exception:  # noqa: BLE001 - an unreachable bucket: the job fails with the worker's own words
            log.exception("reading %s from object storage failed", jd / "result.json")
            return None

    def _keep_logs(self, jd: Path) -> None:
        """The job's log and stderr go to the bucket too, for whoever looks at the job later, on any replica."""
        for name in ("log.jsonl", "stderr.log"):
            try:
                if (jd / name).is_file():
                    self.files.put(jd / name)
            except Exception:  # noqa: BLE001 - the local copy stays; the job's outcome does not depend on it
                log.warning("job log %s not uploaded to object storage", jd / name, exc_info=True)

    def _watch(self, job_id: int, handle: Handle) -> None:
        """Renew the lease while the worker runs; stop it when a cancel is requested."""
        while handle.alive():
            with Session(self.engine) as s:
                s.execute(
                    update(Job)
                    .where(col(Job.id) == job_id, col(Job.owner) == self.name)
                    .values(lease_until=_now() + self.lease)
                )
                s.commit()
                cancel = s.exec(select(Job.cancel_requested).where(Job.id == job_id)).first()
            if cancel:
                handle.terminate()
                return
            if self._stop.wait(1.0):
                return

    def _progress(self, job_id: int, ev: dict[str, Any]) -> None:
        values: dict[str, Any] = {}
        if "progress" in ev:
            values["progress"] = max(0.0, min(1.0, float(ev["progress"])))
        if ev.get("event") == "epoch":
            metric = next((k for k in ("mAP50", "top1") if k in ev), None)
            values["message"] = f"epoch {ev['epoch']}/{ev['epochs']} loss {ev['loss']}" + (
                f" {metric} {ev[metric]}" if metric else ""
            )
        elif ev.get("message"):
            values["message"] = str(ev["message"])[:500]
        if not values:
            return
        with Session(self.engine) as s:
            s.execute(update(Job).where(col(Job.id) == job_id, col(Job.owner) == self.name).values(**values))
            s.commit()

    def _finish(
        self, s: Session, job: Job, event: JobEvent, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        job.state, job.finished_at, job.lease_until = next_job_state(job.state, event), _now(), None
        if result is not None:
            job.result_json, job.progress = json.dumps(result), 1.0
            job.message = result.get("summary", job.message)
        if error is not None:
            job.error = error[:2000]
            job.message = error.splitlines()[0][:500] if error else job.message
        s.add(job)
        if job.state == JobState.FAILED:
            webhooks.emit(s, "job.failed", {"job": job.id, "kind": job.kind, "error": job.message})
        s.commit()


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def log_tail(job_dir: Path, n: int = 50) -> list[dict[str, Any]]:
    try:
        lines = (job_dir / "log.jsonl").read_text().splitlines()[-n:]
    except OSError:
        return []
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out
