"""The update state machine runner.

The table lives in `states.py`; each state that does work is one method of a `Steps` object. The
runner persists the state *before* running its step, so after a crash `resume()` re-enters the same
step (steps before ACTIVE are idempotent; a crash while ACTIVE rolls back, because the candidate may
be what crashed). Re-entries per state are counted and capped to catch crash loops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_agent.fsutil import atomic_write_json, read_json
from edge_agent.update.job import Job
from edge_agent.update.states import RESTING, Event, State, next_state

log = logging.getLogger(__name__)
MAX_REENTRIES = 3


class StepFailed(Exception):
    """A step failed; str() is the reason reported to the server."""


class Steps(Protocol):
    def download(self, job: Job) -> None: ...
    def verify(self, job: Job) -> None: ...
    def prepare(self, job: Job) -> None: ...
    def warm(self, job: Job) -> None: ...
    def activate_and_watch(self, job: Job) -> None: ...
    def commit(self, job: Job) -> None: ...
    def rollback(self, job: Job) -> None: ...


@dataclass
class Record:
    """What is persisted: the state, the job (candidate) being installed, and what is committed."""

    state: State = State.IDLE
    job: Job | None = None
    current: Job | None = None
    reason: str | None = None
    entries: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "job": self.job,
            "current": self.current,
            "reason": self.reason,
            "entries": self.entries,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(
            state=State(data.get("state", "idle")),
            job=data.get("job"),
            current=data.get("current"),
            reason=data.get("reason"),
            entries=dict(data.get("entries", {})),
        )


# state -> (method name on Steps, event fired when the step returns normally)
_STEP: dict[State, tuple[str, Event]] = {
    State.DOWNLOADING: ("download", Event.DOWNLOADED),
    State.VERIFYING: ("verify", Event.VERIFIED),
    State.PREPARING: ("prepare", Event.PREPARED),
    State.WARMING: ("warm", Event.WARMED),
    State.ACTIVE: ("activate_and_watch", Event.HEALTHY),
    State.ROLLING_BACK: ("rollback", Event.ROLLED_BACK),
}


class UpdateMachine:
    def __init__(
        self,
        path: Path,
        steps: Steps,
        on_change: Callable[[Record], None] | None = None,
    ) -> None:
        self._path = path
        self._steps = steps
        self._on_change = on_change
        self._lock = threading.RLock()
        self.record = Record.from_json(read_json(path, {}))
        self.unsaved = False

    # -- persistence -------------------------------------------------------------------------
    def _persist(self) -> bool:
        """Save the record, then report it. A failed save (a full disk) leaves the record in memory, marked
        unsaved, and still reported: the server hears of a failure even when the disk cannot hold it."""
        try:
            atomic_write_json(self._path, self.record.to_json())
            self.unsaved = False
        except OSError as exc:
            self.unsaved = True
            log.error("cannot save the update state (%s): kept in memory and reported", exc.strerror or exc)
        if self._on_change is not None:
            try:
                self._on_change(self.record)
            except Exception:  # a reporting problem must never break an update
                log.exception("update state listener failed")
        return not self.unsaved

    def save_pending(self) -> bool:
        """Retry saving a record a full disk refused; True when nothing is left unsaved. Never waits: while an
        update runs (it holds the lock through its health window) the update saves its own state."""
        if not self.unsaved:
            return True
        if not self._lock.acquire(blocking=False):
            return False
        try:
            return self._persist() if self.unsaved else True
        finally:
            self._lock.release()

    def _fire(self, event: Event, reason: str | None = None) -> None:
        new = next_state(self.record.state, event)
        log.info(
            "update %s --%s--> %s%s", self.record.state.value, event.value, new.value, f" ({reason})" if reason else ""
        )
        self.record.state = new
        if reason is not None or event in (Event.START, Event.ADOPT):
            self.record.reason = reason
        self._persist()

    # -- API ---------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.record.state

    @property
    def busy(self) -> bool:
        return self.record.state not in RESTING

    def refuse(self, job: Job, reason: str) -> None:
        """A deployment that failed the manifest checks: report it; nothing that runs changes."""
        with self._lock:
            if self.busy:
                raise RuntimeError("refuse() while an update is running")
            self.record.job = job
            self._fire(Event.FAIL, reason)

    def adopt_revision(self, revision: int, made_at: int | None = None) -> None:
        """The desired revision changed but asks for what is already committed: note it, do nothing."""
        with self._lock:
            if self.record.current is None or self.busy:
                raise RuntimeError("adopt_revision() needs a committed model and no update running")
            current = self.record.current.copy()
            current["revision"] = revision
            if made_at is not None:
                current["made_at"] = made_at
            self.record.current = current
            self.record.job = self.record.current
            self._fire(Event.ADOPT, None)

    def start(self, job: Job) -> None:
        """Begin installing `job` (manifest already checked) and run to a resting state."""
        with self._lock:
            if self.busy:
                raise RuntimeError(f"an update is already running ({self.record.state.value})")
            self.record.job = job
            self.record.entries = {}
            self._fire(Event.START)
            self._run()

    def resume(self) -> None:
        """After a restart: continue whatever was in progress when the process stopped."""
        with self._lock:
            if not self.busy:
                return
            state = self.record.state
            log.warning("resuming update interrupted in state %s", state.value)
            if state is State.ACTIVE:
                # The candidate was serving when we stopped: it may be why. Go back to the last good model.
                self._fire(Event.FAIL, "agent restarted during the health window")
            self._run()

    # -- runner ------------------------------------------------------------------------------
    def _run(self) -> None:
        while self.record.state not in RESTING:
            state = self.record.state
            method, ok_event = _STEP[state]
            n = self.record.entries.get(state.value, 0) + 1
            self.record.entries[state.value] = n
            # a step runs only when a crash during it would resume from its saved state; a rollback runs anyway:
            # it puts back the model that was serving
            if not self._persist() and state is not State.ROLLING_BACK:
                self._fire(Event.FAIL, f"cannot save the update state before {state.value}: disk full?")
                continue
            if n > MAX_REENTRIES:
                self._fire(Event.FAIL, f"{state.value} entered {n} times: giving up")
                continue
            job = self.record.job or {}
            try:
                getattr(self._steps, method)(job)
            except StepFailed as exc:
                self._fire(Event.FAIL, str(exc))
                continue
            except Exception as exc:  # a bug in a step must not leave the machine mid-state
                log.exception("update step %s crashed", method)
                self._fire(Event.FAIL, f"{method}: {type(exc).__name__}: {exc}")
                continue
            if ok_event is Event.HEALTHY:
                self._steps.commit(job)
                self.record.current = job
            self._fire(ok_event, self.record.reason if ok_event is Event.ROLLED_BACK else None)
