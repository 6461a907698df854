"""The update job: what a slot installs, as persisted in its update state file (JSON) between restarts."""

from __future__ import annotations

from typing import Any, TypedDict


class ArtifactRef(TypedDict):
    """One artifact target of a version, where it comes from and where it lands on disk."""

    url: str
    sha256: str
    length: int
    path: str


class Job(TypedDict, total=False):
    """Everything but `revision` is absent from a job refused before its manifest could be read."""

    revision: int  # the desired revision it came in
    made_at: int  # the revision its slot's deployment was made at (a rollback is signed for it)
    slot: str
    health_window_s: float
    min_fps_ratio: float
    refused: bool  # refused before any step ran (signature, version, expiry, compatibility)
    model: str
    version: int
    rollback: bool
    manifest: dict[str, Any]  # the signed manifest, as JSON
    candidates: dict[str, ArtifactRef]  # target -> artifact, every target this device can run
    measure_budget_s: float  # seconds to time each candidate in the warm step; 0: none
    choice: dict[str, Any] | None  # the timing and the reason a target was chosen (update/measure.py)
    target: str  # the target it serves, and that target's artifact:
    url: str
    sha256: str
    length: int
    path: str


def artifact_of(job: Job) -> ArtifactRef:
    """The artifact a job serves."""
    return {"url": job["url"], "sha256": job["sha256"], "length": job["length"], "path": job["path"]}


def serve(job: Job, target: str, ref: ArtifactRef) -> None:
    """Make `target` (and its artifact) the one the job serves."""
    job["target"] = target
    job["url"], job["sha256"], job["length"], job["path"] = ref["url"], ref["sha256"], ref["length"], ref["path"]
