"""Update state machine: table cases of the state chain a deployment walks, and a crash injected at
every step. If these fail, a device can end up serving nothing, or a half-installed model, after a
power cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.update.machine import MAX_REENTRIES, StepFailed, UpdateMachine
from edge_agent.update.states import RESTING, TRANSITIONS, Event, State, TransitionError, next_state

S = State


class Crash(BaseException):
    """Simulates the process dying inside a step (not caught by the machine, like SIGKILL)."""


class ScriptedSteps:
    """Records every step called; raises what the test asks for at a given step."""

    def __init__(self, fail: dict[str, Exception | BaseException] | None = None) -> None:
        self.fail = dict(fail or {})
        self.calls: list[str] = []

    def _do(self, name: str) -> None:
        self.calls.append(name)
        exc = self.fail.pop(name, None)
        if exc is not None:
            raise exc

    def download(self, job: dict[str, Any]) -> None:
        self._do("download")

    def verify(self, job: dict[str, Any]) -> None:
        self._do("verify")

    def prepare(self, job: dict[str, Any]) -> None:
        self._do("prepare")

    def warm(self, job: dict[str, Any]) -> None:
        self._do("warm")

    def activate_and_watch(self, job: dict[str, Any]) -> None:
        self._do("activate_and_watch")

    def commit(self, job: dict[str, Any]) -> None:
        self._do("commit")

    def rollback(self, job: dict[str, Any]) -> None:
        self._do("rollback")


def run(tmp_path: Path, steps: ScriptedSteps) -> tuple[UpdateMachine, list[State]]:
    chain: list[State] = []
    m = UpdateMachine(tmp_path / "update.json", steps, on_change=lambda r: chain.append(r.state))
    m.start({"model": "m", "version": 2})
    return m, _dedupe(chain)


def _dedupe(chain: list[State]) -> list[State]:
    out: list[State] = []
    for s in chain:
        if not out or out[-1] != s:
            out.append(s)
    return out


HAPPY = [S.DOWNLOADING, S.VERIFYING, S.PREPARING, S.WARMING, S.ACTIVE, S.COMMITTED]


@pytest.mark.parametrize(
    "fail_at, chain, reason",
    [
        (None, HAPPY, None),
        ("download", [S.DOWNLOADING, S.FAILED], "net down"),
        ("verify", [S.DOWNLOADING, S.VERIFYING, S.FAILED], "net down"),
        ("prepare", [S.DOWNLOADING, S.VERIFYING, S.PREPARING, S.FAILED], "net down"),
        ("warm", [S.DOWNLOADING, S.VERIFYING, S.PREPARING, S.WARMING, S.FAILED], "net down"),
        ("activate_and_watch", HAPPY[:5] + [S.ROLLING_BACK, S.FAILED], "net down"),
    ],
)
def test_state_chain(tmp_path: Path, fail_at: str | None, chain: list[State], reason: str | None) -> None:
    steps = ScriptedSteps({fail_at: StepFailed("net down")} if fail_at else None)
    m, seen = run(tmp_path, steps)
    assert seen == chain
    assert m.record.reason == reason
    if fail_at == "activate_and_watch":
        assert steps.calls[-1] == "rollback"
    if fail_at is None:
        assert m.record.current == {"model": "m", "version": 2}
    else:
        assert m.record.current is None  # nothing new was committed


def test_unexpected_exception_in_step_fails_cleanly(tmp_path: Path) -> None:
    m, seen = run(tmp_path, ScriptedSteps({"prepare": KeyError("boom")}))
    assert seen[-1] is S.FAILED
    assert "KeyError" in (m.record.reason or "")


CRASH_POINTS = ["download", "verify", "prepare", "warm", "activate_and_watch", "rollback"]


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_crash_at_each_step_then_resume(tmp_path: Path, crash_at: str) -> None:
    fail: dict[str, Exception | BaseException] = {crash_at: Crash()}
    if crash_at == "rollback":  # to reach rollback, the health window must fail first
        fail = {"activate_and_watch": StepFailed("unhealthy"), "rollback": Crash()}
    steps = ScriptedSteps(fail)
    m = UpdateMachine(tmp_path / "update.json", steps)
    with pytest.raises(Crash):
        m.start({"model": "m", "version": 2})
    persisted_at = m.record.state
    assert persisted_at not in RESTING  # the crash left the update mid-way, on disk
    # process restarts: a fresh machine reads the persisted record and resumes
    steps2 = ScriptedSteps()
    m2 = UpdateMachine(tmp_path / "update.json", steps2)
    assert m2.state == persisted_at
    m2.resume()
    if crash_at in ("activate_and_watch", "rollback"):
        # the candidate may be what crashed: go back to the last committed model
        assert m2.state is S.FAILED
        assert steps2.calls == ["rollback"]
        assert m2.record.current is None
    else:
        # steps before activation are idempotent: re-run from the crashed one and finish
        assert m2.state is S.COMMITTED
        assert steps2.calls[0] == crash_at
        assert m2.record.current == {"model": "m", "version": 2}


def test_crash_loop_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "update.json"
    m = UpdateMachine(path, ScriptedSteps({"download": Crash()}))
    with pytest.raises(Crash):
        m.start({"model": "m", "version": 2})
    for _ in range(MAX_REENTRIES - 1):
        with pytest.raises(Crash):
            UpdateMachine(path, ScriptedSteps({"download": Crash()})).resume()
    last = UpdateMachine(path, ScriptedSteps())
    last.resume()
    assert last.state is S.FAILED
    assert "giving up" in (last.record.reason or "")


def test_refuse_reports_failed_without_touching_current(tmp_path: Path) -> None:
    m, _ = run(tmp_path, ScriptedSteps())
    m.refuse({"model": "m", "version": 9}, "signature: bad")
    assert m.state is S.FAILED and m.record.current == {"model": "m", "version": 2}
    m.start({"model": "m", "version": 3})  # a later good deployment still installs
    assert m.state is S.COMMITTED


def test_adopt_after_refusal_returns_to_committed(tmp_path: Path) -> None:
    """A refused deployment followed by desired state naming the committed model: converged again."""
    m, _ = run(tmp_path, ScriptedSteps())
    m.refuse({"model": "m", "version": 9, "revision": 5}, "signature: bad")
    m.adopt_revision(6)
    assert m.state is S.COMMITTED and m.record.reason is None
    assert m.record.current == {"model": "m", "version": 2, "revision": 6}


def test_table_has_no_way_out_of_resting_except_start_fail_adopt() -> None:
    for (state, event), _ in TRANSITIONS.items():
        if state in RESTING:
            assert event in (Event.START, Event.FAIL, Event.ADOPT)
    with pytest.raises(TransitionError):
        next_state(S.IDLE, Event.HEALTHY)
    with pytest.raises(TransitionError):
        next_state(S.DOWNLOADING, Event.WARMED)
