"""Job states as data: one enum of states, one of events, one transition table.

A job is queued, claimed by one replica (running), and ends succeeded, failed or cancelled. A running
job whose lease lapsed (its replica died or stopped) goes back to the queue and resumes from its last
checkpoint, up to `MAX_ATTEMPTS` claims; after that it is abandoned as failed. An operator can retry a
failed or cancelled job: it goes back to the queue and resumes from its last checkpoint.
"""

from __future__ import annotations

from fleet_server.strenum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobEvent(StrEnum):
    CLAIM = "claim"  # a replica takes it
    LEASE_LAPSED = "lease_lapsed"  # its replica is gone: back to the queue
    ABANDON = "abandon"  # lapsed once too often
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    RETRY = "retry"  # an operator runs a failed or cancelled job again


JOB_TRANSITIONS: dict[tuple[JobState, JobEvent], JobState] = {
    (JobState.QUEUED, JobEvent.CLAIM): JobState.RUNNING,
    (JobState.QUEUED, JobEvent.CANCEL): JobState.CANCELLED,
    (JobState.RUNNING, JobEvent.LEASE_LAPSED): JobState.QUEUED,
    (JobState.RUNNING, JobEvent.ABANDON): JobState.FAILED,
    (JobState.RUNNING, JobEvent.SUCCEED): JobState.SUCCEEDED,
    (JobState.RUNNING, JobEvent.FAIL): JobState.FAILED,
    (JobState.RUNNING, JobEvent.CANCEL): JobState.CANCELLED,
    (JobState.FAILED, JobEvent.RETRY): JobState.QUEUED,
    (JobState.CANCELLED, JobEvent.RETRY): JobState.QUEUED,
}
# Ended: only an operator's retry moves these again.
FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# A job in these occupies the queue (a retrain policy waits for it).
PENDING = frozenset({JobState.QUEUED, JobState.RUNNING})
MAX_ATTEMPTS = 3


class JobTransitionError(RuntimeError):
    pass


def next_job_state(state: JobState | str, event: JobEvent) -> JobState:
    try:
        return JOB_TRANSITIONS[(JobState(state), event)]
    except KeyError:
        raise JobTransitionError(f"a {state} job cannot {event}") from None
