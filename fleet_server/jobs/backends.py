"""Where a job's worker runs: a subprocess on this replica (`local`, the default), or a Ray cluster through
Ray's job submission API (`ray://HOST:PORT`, the address of the cluster's dashboard, 8265 by default).

Either way the worker is the same program (`python -m fleet_server.jobs.worker JOB_DIR`), printing one JSON
object per line; the runner reads the lines, and registers the result in the server. On Ray the job keeps
running when the server stops or dies: the next server to claim it re-attaches to it (by the submission id
kept in the job folder) instead of starting it again, and reads its log from where the last one stopped.
With object storage (`EDGELOOP_STORAGE_URL`) a Ray job needs nothing from the server's disk: it reads its
parameters, dataset and checkpoints from the bucket into the node's cache (`EDGELOOP_CACHE_DIR`) and writes
its checkpoints, compiled files and result back (see model_zoo/objects.py). Without one, the job folder must be
reachable from the Ray nodes at the same path (the same machine, or a shared filesystem).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from fleet_server.procs import die_with_parent

log = logging.getLogger(__name__)


class JobsBackendError(RuntimeError):
    """The jobs backend cannot be used; str() says why (the server refuses to start with it)."""


class Handle(Protocol):
    def lines(self) -> Iterator[str]: ...  # the worker's output, until it ends (or the handle is detached)
    def returncode(self) -> int: ...  # 0 done; -SIGTERM stopped; anything else failed
    def alive(self) -> bool: ...
    def terminate(self) -> None: ...  # cancel: the worker stops
    def detach(self) -> None: ...  # the server stops: a local worker stops too, a Ray job keeps running


class LocalHandle:
    def __init__(self, jd: Path) -> None:
        self._stderr = open(jd / "stderr.log", "a")  # noqa: SIM115 - closed when the worker ends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet_server.jobs.worker", str(jd)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=die_with_parent,
            # its own process group: a Ctrl-C or SIGTERM sent to the server's group reaches the server, which
            # stops the worker and requeues the job, rather than killing the worker mid-epoch
            start_new_session=True,
        )

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        yield from self.proc.stdout

    def returncode(self) -> int:
        rc = self.proc.wait()
        self._stderr.close()
        return rc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def detach(self) -> None:
        if self.alive():
            self.proc.terminate()  # the lease lapses and another replica (or the next start) resumes the job


class LocalBackend:
    name = "local"

    def launch(self, job_id: int, jd: Path, storage_url: str | None = None) -> Handle:
        return LocalHandle(jd)  # on this replica: the data dir is its root, the bucket (if any) its mirror


_TERMINAL = {"SUCCEEDED": 0, "STOPPED": -signal.SIGTERM, "FAILED": 1}


def _last_lines(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


class RayHandle:
    """A Ray job, read by polling its log (each poll takes what was added since the last; the offset is kept
    in the job folder, so a server that re-attaches does not read anything twice)."""

    def __init__(self, client: object, submission_id: str, jd: Path, poll_s: float = 0.5) -> None:
        self.client, self.id, self.jd, self.poll_s = client, submission_id, jd, poll_s
        self._detached = False
        self._status = "PENDING"
        self._seen: set[tuple[str, str]] = set()

    def _offset(self) -> int:
        try:
            return int((self.jd / "ray_offset").read_text())
        except (OSError, ValueError):
            return 0

    def lines(self) -> Iterator[str]:
        offset, partial = self._offset(), ""
        # a server killed after writing a poll's lines to log.jsonl, before it recorded the offset, reads them
        # again when it re-attaches (and a second node's forwarder may repeat an actor's line later): a server
        # that re-attaches skips the lines log.jsonl already holds
        recent = set(_last_lines(self.jd / "log.jsonl", 500)) if offset else set()
        with open(self.jd / "stderr.log", "a") as err:
            while not self._detached:
                self._status = str(self.client.get_job_status(self.id))  # type: ignore[attr-defined]
                self._status = self._status.rsplit(".", 1)[-1]  # JobStatus.RUNNING -> RUNNING
                text = self.client.get_job_logs(self.id)  # type: ignore[attr-defined]
                new, offset = text[offset:], len(text)
                chunk = partial + new
                *complete, partial = chunk.split("\n")
                if self._status in _TERMINAL and partial:
                    complete, partial = [*complete, partial], ""
                for line in complete:
                    actor, out = _split(line)
                    if actor:
                        # an actor's line can reach the job's log more than once (one forwarder per node)
                        if (actor, out) in self._seen:
                            continue
                        self._seen.add((actor, out))
                    if out in recent:
                        continue
                    if not out.startswith("{"):
                        err.write(out + "\n")
                        err.flush()
                    yield out + "\n"
                (self.jd / "ray_offset").write_text(str(offset - len(partial)))
                if self._status in _TERMINAL:
                    return
                time.sleep(self.poll_s)

    def returncode(self) -> int:
        if self._detached:
            return -signal.SIGTERM
        return _TERMINAL.get(self._status, 1)

    def alive(self) -> bool:
        return not self._detached and self._status not in _TERMINAL

    def terminate(self) -> None:
        self.client.stop_job(self.id)  # type: ignore[attr-defined]

    def detach(self) -> None:
        self._detached = True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _split(line: str) -> tuple[str, str]:
    """Ray forwards an actor's output to the job's log as `(RayTrainWorker pid=…, ip=…) TEXT`, coloured:
    (the actor's prefix, TEXT); the prefix is empty for the job's own lines."""
    line = _ANSI.sub("", line)
    if line.startswith("(") and ") " in line:
        head, rest = line.split(") ", 1)
        if "pid=" in head:
            return head + ")", rest
    return "", line


class RayBackend:
    name = "ray"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ray" or not parts.hostname:
            raise JobsBackendError(f"a Ray jobs URL is ray://HOST:PORT (the dashboard's port), got {url!r}")
        self.address = f"http://{parts.hostname}:{parts.port or 8265}"
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as exc:
            raise JobsBackendError(f"{url}: Ray is not installed here (pip install 'edgeloop[ray]'): {exc}") from exc
        try:
            self.client = JobSubmissionClient(self.address)
            self.client.list_jobs()
        except Exception as exc:  # noqa: BLE001 - any failure means the cluster cannot take jobs
            raise JobsBackendError(f"the Ray cluster at {self.address} does not answer: {exc}") from exc

    def launch(self, job_id: int, jd: Path, storage_url: str | None = None) -> Handle:
        """With object storage the Ray job reads its parameters and inputs from the bucket and writes its
        checkpoints and result there (any node will do); without, it reads JD on a filesystem it shares."""
        sid_file = jd / "ray_submission"
        if sid_file.is_file():
            sid = sid_file.read_text().strip()
            try:
                status = str(self.client.get_job_status(sid)).rsplit(".", 1)[-1]
            except Exception:  # noqa: BLE001 - an id the cluster has forgotten: start anew
                status = "UNKNOWN"
            if status in ("PENDING", "RUNNING") or (status == "SUCCEEDED" and (jd / "result.json").is_file()):
                log.info("job %d: re-attached to Ray job %s (%s)", job_id, sid, status.lower())
                return RayHandle(self.client, sid, jd)
        sid = f"edgeloop-job-{job_id}-{int(time.time())}"
        (jd / "ray_offset").write_text("0")
        worker = f"{sys.executable} -m fleet_server.jobs.worker"
        entry = f"{worker} --job {job_id} --storage-url {shlex.quote(storage_url)}" if storage_url else f"{worker} {jd}"
        self.client.submit_job(
            entrypoint=entry,
            submission_id=sid,
            entrypoint_num_cpus=0,  # the driver coordinates; the training workers ask for their own CPUs / GPUs
            # every worker's lines in the log as they are (Ray folds repeated lines across workers by default)
            runtime_env={
                "env_vars": {"PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0", "EDGELOOP_RAY_ADDRESS": self.address}
            },
            metadata={"edgeloop_job": str(job_id)},
        )
        sid_file.write_text(sid)
        log.info("job %d: submitted to Ray as %s", job_id, sid)
        return RayHandle(self.client, sid, jd)


def backend_for(url: str) -> LocalBackend | RayBackend:
    if url in ("", "local"):
        return LocalBackend()
    if url.startswith("ray://"):
        return RayBackend(url)
    raise JobsBackendError(f"jobs URL must be `local` or ray://HOST:PORT, got {url!r}")
