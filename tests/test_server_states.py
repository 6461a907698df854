"""The server's state machines as tables: each case lists events and the chain of states they must give.

An operator relies on these: a paused rollout resumes where it was, a completed one can still be rolled
back but never paused, a finished job is never re-run, a device counted as failed is sent back on abort.
"""

from __future__ import annotations

import json

import pytest

from fleet_server.flywheel.tables import REVIEW_TRANSITIONS, ReviewAction, SampleState
from fleet_server.jobs.states import FINISHED, JobEvent, JobState, JobTransitionError, next_job_state
from fleet_server.rollouts.states import (
    DEVICE_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    DeviceEvent,
    DeviceRolloutState,
    RolloutEvent,
    RolloutState,
    TransitionError,
    next_device_state,
    next_rollout_state,
    sources,
)

R, RE = RolloutState, RolloutEvent
D, DE = DeviceRolloutState, DeviceEvent
J, JE = JobState, JobEvent


def _chain(start, events, step):  # type: ignore[no-untyped-def]
    states = [start]
    for e in events:
        states.append(step(states[-1], e))
    return states


@pytest.mark.parametrize(
    "events, chain",
    [
        ([], [R.RUNNING]),
        ([RE.COMPLETE], [R.RUNNING, R.COMPLETED]),
        ([RE.PAUSE, RE.RESUME, RE.COMPLETE], [R.RUNNING, R.PAUSED, R.RUNNING, R.COMPLETED]),
        ([RE.PAUSE, RE.PROMOTE, RE.ABORT, RE.ABORTED], [R.RUNNING, R.PAUSED, R.PAUSED, R.ABORTING, R.ABORTED]),
        ([RE.COMPLETE, RE.ROLLBACK, RE.ABORTED], [R.RUNNING, R.COMPLETED, R.ABORTING, R.ABORTED]),
        ([RE.SUPERSEDE, RE.ROLLBACK], [R.RUNNING, R.SUPERSEDED, R.ABORTING]),
    ],
)
def test_rollout_chains(events: list[RolloutEvent], chain: list[RolloutState]) -> None:
    assert _chain(R.RUNNING, events, next_rollout_state) == chain


@pytest.mark.parametrize(
    "state, event",
    [
        (R.COMPLETED, RE.PAUSE),
        (R.COMPLETED, RE.ABORT),
        (R.PAUSED, RE.PAUSE),
        (R.RUNNING, RE.RESUME),
        (R.ABORTED, RE.RESUME),
        (R.PAUSED, RE.COMPLETE),  # a paused rollout never completes on its own
        (R.COMPLETED, RE.SUPERSEDE),
    ],
)
def test_rollout_refuses(state: RolloutState, event: RolloutEvent) -> None:
    with pytest.raises(TransitionError):
        next_rollout_state(state, event)


@pytest.mark.parametrize(
    "events, chain",
    [
        ([DE.DEPLOY, DE.COMMITTED], [D.PENDING, D.DEPLOYING, D.ACTIVE]),
        ([DE.DEPLOY, DE.UPDATE_FAILED, DE.ROLL_BACK], [D.PENDING, D.DEPLOYING, D.FAILED, D.ROLLED_BACK]),
        ([DE.DEPLOY, DE.DEPLOY_REFUSED], [D.PENDING, D.DEPLOYING, D.FAILED]),
        ([DE.DEPLOY, DE.TIMED_OUT], [D.PENDING, D.DEPLOYING, D.NOT_UPDATED]),
        ([DE.DEPLOY, DE.COMMITTED, DE.GATE_FAILED, DE.ROLL_BACK], [D.PENDING, D.DEPLOYING, D.ACTIVE, D.GATE_FAILED, D.ROLLED_BACK]),  # noqa: E501
        # a shadow canary that agreed goes back to pending and activates the candidate with wave 1
        ([DE.DEPLOY, DE.COMMITTED, DE.SHADOW_PASSED, DE.DEPLOY], [D.PENDING, D.DEPLOYING, D.ACTIVE, D.PENDING, D.DEPLOYING]),  # noqa: E501
    ],
)  # fmt: skip
def test_device_chains(events: list[DeviceEvent], chain: list[DeviceRolloutState]) -> None:
    assert _chain(D.PENDING, events, next_device_state) == chain


def test_devices_never_touched_are_not_sent_back() -> None:
    """An abort rolls back what was deployed; a pending or silent device keeps what it runs."""
    assert set(sources(DE.ROLL_BACK)) == {D.DEPLOYING, D.ACTIVE, D.FAILED, D.GATE_FAILED}
    for state in (D.PENDING, D.NOT_UPDATED, D.ROLLED_BACK):
        with pytest.raises(TransitionError):
            next_device_state(state, DE.ROLL_BACK)


@pytest.mark.parametrize(
    "events, chain",
    [
        ([JE.CLAIM, JE.SUCCEED], [J.QUEUED, J.RUNNING, J.SUCCEEDED]),
        ([JE.CANCEL], [J.QUEUED, J.CANCELLED]),
        ([JE.CLAIM, JE.LEASE_LAPSED, JE.CLAIM, JE.FAIL], [J.QUEUED, J.RUNNING, J.QUEUED, J.RUNNING, J.FAILED]),
        ([JE.CLAIM, JE.ABANDON], [J.QUEUED, J.RUNNING, J.FAILED]),
        ([JE.CLAIM, JE.CANCEL], [J.QUEUED, J.RUNNING, J.CANCELLED]),
        ([JE.CLAIM, JE.FAIL, JE.RETRY, JE.CLAIM], [J.QUEUED, J.RUNNING, J.FAILED, J.QUEUED, J.RUNNING]),
        ([JE.CANCEL, JE.RETRY], [J.QUEUED, J.CANCELLED, J.QUEUED]),
    ],
)
def test_job_chains(events: list[JobEvent], chain: list[JobState]) -> None:
    assert _chain(J.QUEUED, events, next_job_state) == chain


@pytest.mark.parametrize("state", sorted(FINISHED))
@pytest.mark.parametrize("event", list(JobEvent))
def test_a_finished_job_moves_only_by_an_operators_retry(state: JobState, event: JobEvent) -> None:
    if event == JobEvent.RETRY and state != JobState.SUCCEEDED:
        assert next_job_state(state, event) == JobState.QUEUED  # failed or cancelled: queued again
        return
    with pytest.raises(JobTransitionError):
        next_job_state(state, event)


def test_every_state_is_reachable_and_every_table_names_only_its_own_states() -> None:
    for table, start, states in (
        (ROLLOUT_TRANSITIONS, R.RUNNING, set(RolloutState)),
        (DEVICE_TRANSITIONS, D.PENDING, set(DeviceRolloutState)),
    ):
        seen, todo = {start}, [start]
        while todo:
            s = todo.pop()
            for (frm, _), to in table.items():
                if frm == s and to not in seen:
                    seen.add(to)
                    todo.append(to)
        assert seen == states
    assert {to for to in REVIEW_TRANSITIONS.values()} == set(SampleState) - {SampleState.NEW}


@pytest.mark.parametrize("state", list(SampleState))
def test_review_may_change_its_mind(state: SampleState) -> None:
    assert REVIEW_TRANSITIONS[(state, ReviewAction.REJECT)] == SampleState.REJECTED
    assert REVIEW_TRANSITIONS[(state, ReviewAction.CORRECT)] == SampleState.CORRECTED


def test_states_are_their_values_in_text_and_json() -> None:
    """The API, the CLI and the database all see `running`, never `RolloutState.RUNNING`."""
    assert f"{R.RUNNING}" == "running" and str(J.QUEUED) == "queued"
    assert json.dumps({D.ACTIVE: [D.ACTIVE]}) == '{"active": ["active"]}'
