"""A hard sample's review states and how review moves them: no database, so the CLI imports it cheaply."""

from __future__ import annotations

from fleet_server.strenum import StrEnum


class SampleState(StrEnum):
    NEW = "new"  # uploaded by a device, not reviewed
    ACCEPTED = "accepted"  # the device's pre-annotations, kept as labels
    CORRECTED = "corrected"  # labels given by a person (or imported)
    REJECTED = "rejected"  # not worth training on


class ReviewAction(StrEnum):
    ACCEPT = "accept"
    CORRECT = "correct"
    REJECT = "reject"


# Review may change its mind: every state moves on every action.
REVIEW_TRANSITIONS: dict[tuple[SampleState, ReviewAction], SampleState] = {
    **{(s, ReviewAction.ACCEPT): SampleState.ACCEPTED for s in SampleState},
    **{(s, ReviewAction.CORRECT): SampleState.CORRECTED for s in SampleState},
    **{(s, ReviewAction.REJECT): SampleState.REJECTED for s in SampleState},
}
LABELLED = frozenset({SampleState.ACCEPTED, SampleState.CORRECTED})
SAMPLE_STATES = tuple(s.value for s in SampleState)
