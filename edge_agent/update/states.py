"""The update state machine as data: one enum of states, one of events, one transition table."""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    PREPARING = "preparing"
    WARMING = "warming"
    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"


class Event(str, Enum):
    START = "start"  # a new desired deployment passed the manifest checks
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    PREPARED = "prepared"
    WARMED = "warmed"  # candidate swapped in between two frames
    HEALTHY = "healthy"  # health window passed
    FAIL = "fail"
    ROLLED_BACK = "rolled_back"
    ADOPT = "adopt"  # desired state names exactly what is committed: converged, nothing to install


# States in which no step is running; a new deployment may start from these.
RESTING = frozenset({State.IDLE, State.COMMITTED, State.FAILED})
# Before ACTIVE the previous model never stopped serving: a failure needs no rollback.
_PRE_ACTIVE = (State.DOWNLOADING, State.VERIFYING, State.PREPARING, State.WARMING)

TRANSITIONS: dict[tuple[State, Event], State] = {
    **{(s, Event.START): State.DOWNLOADING for s in RESTING},
    **{(s, Event.FAIL): State.FAILED for s in RESTING},  # manifest refused: nothing changes but the report
    **{(s, Event.ADOPT): State.COMMITTED for s in RESTING},
    (State.DOWNLOADING, Event.DOWNLOADED): State.VERIFYING,
    (State.VERIFYING, Event.VERIFIED): State.PREPARING,
    (State.PREPARING, Event.PREPARED): State.WARMING,
    (State.WARMING, Event.WARMED): State.ACTIVE,
    (State.ACTIVE, Event.HEALTHY): State.COMMITTED,
    **{(s, Event.FAIL): State.FAILED for s in _PRE_ACTIVE},
    (State.ACTIVE, Event.FAIL): State.ROLLING_BACK,
    (State.ROLLING_BACK, Event.ROLLED_BACK): State.FAILED,
    (State.ROLLING_BACK, Event.FAIL): State.FAILED,
}


class TransitionError(RuntimeError):
    pass


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"no transition from {state.value} on {event.value}") from None
