"""The agent's manifest checks, in the order the design fixes:

signature -> version not older than trusted (unless a signed rollback for this device and this desired
revision) -> not expired -> compatible.
Length and sha256 are checked on the downloaded bytes (`download.py`, `machine.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from edge_agent.protocol.manifest import Manifest
from edge_agent.protocol.signing import SignatureError, SignedManifest, verify_signed_manifest
from edge_agent.update.trust import TrustStore

# Targets in order of preference per device kind; the agent takes the first one the manifest has.
TARGET_PREFERENCE = {
    "tensorrt": ("tensorrt", "onnx-fp16", "onnx-int8", "onnx-fp32"),
    "cuda": ("onnx-fp16", "onnx-fp32", "onnx-int8"),
    "cpu": ("onnx-int8", "onnx-fp32"),
}


def runnable_targets(manifest: Manifest, device_kind: str) -> list[str]:
    """The manifest's targets a device of this kind can run, in its order of preference."""
    return [t for t in TARGET_PREFERENCE.get(device_kind, TARGET_PREFERENCE["cpu"]) if t in manifest.artifacts]


class ManifestRejected(Exception):
    """The manifest failed one of the checks; str() is the reason reported to the server."""


@dataclass(frozen=True)
class Accepted:
    manifest: Manifest
    target: str


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def check_manifest(
    envelope: SignedManifest,
    root_public_key: str,
    trust: TrustStore,
    agent_version: str,
    runtimes: list[str],
    device_kind: str = "cpu",
    now: datetime | None = None,
    device_id: str | None = None,
    revision: int | None = None,
) -> Accepted:
    now = now or datetime.now(timezone.utc)
    try:
        manifest = verify_signed_manifest(envelope, root_public_key, now=now)
    except SignatureError as exc:
        raise ManifestRejected(f"signature: {exc}") from exc
    trusted = trust.trusted_version(manifest.model)
    if manifest.version < trusted and not manifest.rollback:
        raise ManifestRejected(
            f"version: {manifest.ref} is older than trusted version {trusted} and is not a signed rollback"
        )
    if manifest.version < trusted and (manifest.rollback_device, manifest.rollback_revision) != (device_id, revision):
        # a rollback answers one desired state of one device: replayed elsewhere or later, it would downgrade
        raise ManifestRejected(
            f"rollback: {manifest.ref} was signed for device {manifest.rollback_device!r} at revision "
            f"{manifest.rollback_revision}, not {device_id!r} at revision {revision}"
        )
    if manifest.expired(now):
        raise ManifestRejected(f"expired: {manifest.ref} expired at {manifest.expires_at.isoformat()}")
    compat = manifest.compatibility
    if _version_tuple(agent_version) < _version_tuple(compat.min_agent_version):
        raise ManifestRejected(
            f"incompatible: {manifest.ref} needs agent >= {compat.min_agent_version}, this is {agent_version}"
        )
    if not set(compat.runtimes) & set(runtimes):
        raise ManifestRejected(
            f"incompatible: {manifest.ref} runs on {list(compat.runtimes)}, this agent has {runtimes}"
        )
    preference = TARGET_PREFERENCE.get(device_kind, TARGET_PREFERENCE["cpu"])
    measured = manifest.recommended.get(device_kind)
    if measured in manifest.artifacts and measured in preference:  # measured best beats the static order
        return Accepted(manifest, measured)
    for target in preference:
        if target in manifest.artifacts:
            return Accepted(manifest, target)
    raise ManifestRejected(
        f"incompatible: {manifest.ref} has targets {sorted(manifest.artifacts)}, none runs on a {device_kind} device"
    )
