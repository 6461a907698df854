"""Rollout states and the states of each device inside a rollout, as data: enums and transition tables.

The engine (`engine.py`) and the operator actions (`service.py`) move a state only through these tables,
the way the agent's update machine does (`edge_agent/update/states.py`): a move the table does not
list is a bug, and raises.
"""

from __future__ import annotations

from fleet_server.strenum import StrEnum


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ABORTING = "aborting"  # an abort or rollback was asked for; the engine sends devices back
    COMPLETED = "completed"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"  # a newer rollout took over its devices


class RolloutEvent(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"  # skip the rest of the bake time
    ABORT = "abort"  # stop a rollout that is still going
    ROLLBACK = "rollback"  # send devices back, at any time, even after completion
    ABORTED = "aborted"  # the engine has sent the devices back
    COMPLETE = "complete"  # the last wave passed
    SUPERSEDE = "supersede"


# Operators keep a rollout in these; the engine leaves them to it (it may still supersede, abort, promote).
LIVE = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})
# The engine acts on rollouts in these states.
ENGINE_STATES = frozenset({RolloutState.RUNNING, RolloutState.ABORTING})

ROLLOUT_TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (RolloutState.RUNNING, RolloutEvent.PAUSE): RolloutState.PAUSED,
    (RolloutState.PAUSED, RolloutEvent.RESUME): RolloutState.RUNNING,
    **{(s, RolloutEvent.PROMOTE): s for s in LIVE},
    **{(s, RolloutEvent.ABORT): RolloutState.ABORTING for s in LIVE},
    **{(s, RolloutEvent.ROLLBACK): RolloutState.ABORTING for s in RolloutState},
    (RolloutState.ABORTING, RolloutEvent.ABORTED): RolloutState.ABORTED,
    (RolloutState.RUNNING, RolloutEvent.COMPLETE): RolloutState.COMPLETED,
    **{(s, RolloutEvent.SUPERSEDE): RolloutState.SUPERSEDED for s in LIVE},
}


class DeviceRolloutState(StrEnum):
    PENDING = "pending"  # waits for its wave
    DEPLOYING = "deploying"  # desired state sent; waits for the device to commit
    ACTIVE = "active"  # the device committed the new version (or runs it in shadow)
    FAILED = "failed"  # the device's update failed, or the deploy was refused
    NOT_UPDATED = "not_updated"  # offline or silent past the timeout: not counted either way
    GATE_FAILED = "gate_failed"  # updated, but its behaviour failed a gate
    ROLLED_BACK = "rolled_back"  # the rollout was aborted and the device sent back


class DeviceEvent(StrEnum):
    DEPLOY = "deploy"  # its wave started
    DEPLOY_REFUSED = "deploy_refused"  # the server could not set the desired state
    COMMITTED = "committed"
    UPDATE_FAILED = "update_failed"
    TIMED_OUT = "timed_out"  # no activation in time, or the device was deleted
    GATE_FAILED = "gate_failed"
    SHADOW_PASSED = "shadow_passed"  # its shadow canary agreed: it activates the candidate with the next wave
    ROLL_BACK = "roll_back"


_D, _E = DeviceRolloutState, DeviceEvent
# Devices that were touched by the rollout: an abort sends these back.
ROLL_BACK_FROM = frozenset({_D.DEPLOYING, _D.ACTIVE, _D.FAILED, _D.GATE_FAILED})

DEVICE_TRANSITIONS: dict[tuple[DeviceRolloutState, DeviceEvent], DeviceRolloutState] = {
    (_D.PENDING, _E.DEPLOY): _D.DEPLOYING,
    (_D.DEPLOYING, _E.DEPLOY_REFUSED): _D.FAILED,
    (_D.DEPLOYING, _E.COMMITTED): _D.ACTIVE,
    (_D.DEPLOYING, _E.UPDATE_FAILED): _D.FAILED,
    (_D.DEPLOYING, _E.TIMED_OUT): _D.NOT_UPDATED,
    (_D.ACTIVE, _E.GATE_FAILED): _D.GATE_FAILED,
    (_D.ACTIVE, _E.SHADOW_PASSED): _D.PENDING,
    **{(s, _E.ROLL_BACK): _D.ROLLED_BACK for s in ROLL_BACK_FROM},
}
# A wave's verdict counts these as failed.
FAILED_STATES = frozenset({_D.FAILED, _D.GATE_FAILED})


class TransitionError(RuntimeError):
    pass


def next_rollout_state(state: RolloutState | str, event: RolloutEvent) -> RolloutState:
    try:
        return ROLLOUT_TRANSITIONS[(RolloutState(state), event)]
    except KeyError:
        raise TransitionError(f"a {state} rollout cannot {event}") from None


def next_device_state(state: DeviceRolloutState | str, event: DeviceEvent) -> DeviceRolloutState:
    try:
        return DEVICE_TRANSITIONS[(DeviceRolloutState(state), event)]
    except KeyError:
        raise TransitionError(f"no transition from {state} on {event}") from None


def sources(event: DeviceEvent) -> tuple[DeviceRolloutState, ...]:
    """The states a device row may leave on `event` (for compare-and-set updates)."""
    return tuple(s for (s, e) in DEVICE_TRANSITIONS if e == event)
