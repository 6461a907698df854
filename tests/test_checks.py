"""The agent's manifest checks run in the order the design fixes, so the reported reason names the first
check that failed: signature -> version -> expiry -> compatibility."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_agent.protocol.manifest import ArtifactEntry, Compatibility
from edge_agent.update.checks import ManifestRejected, check_manifest
from edge_agent.update.trust import TrustStore
from tests.factories import Keys, signed

NOW = datetime.now(timezone.utc).replace(microsecond=0)
EXPIRED = {"created_at": NOW - timedelta(days=2), "expires_at": NOW - timedelta(days=1)}
NEEDS_NEW_AGENT = {"compatibility": Compatibility(min_agent_version="99.0")}
GPU_ONLY = {"artifacts": {"onnx-fp16": ArtifactEntry(url="/x", sha256="b" * 64, length=1)}}


@pytest.mark.parametrize(
    "version, over, foreign_key, expect",
    [
        (1, {}, True, "signature"),  # everything else fine, wrong signer
        (1, EXPIRED | NEEDS_NEW_AGENT, True, "signature"),  # signature is checked first
        (1, EXPIRED, False, "version"),  # older than trusted (3) beats expired
        (5, EXPIRED | NEEDS_NEW_AGENT, False, "expired"),
        (5, NEEDS_NEW_AGENT, False, "incompatible"),
        (5, GPU_ONLY, False, "incompatible"),
    ],
)
def test_first_failing_check_is_reported(
    tmp_path: Path, version: int, over: dict, foreign_key: bool, expect: str
) -> None:
    keys = Keys()
    trust = TrustStore(tmp_path / "trust.json")
    trust.record("colors", 3)
    env = signed(Keys() if foreign_key else keys, version=version, **over)
    with pytest.raises(ManifestRejected) as err:
        check_manifest(env, keys.root_public, trust, "0.1.0", ["onnxruntime"], "cpu")
    assert str(err.value).startswith(expect), str(err.value)


def test_accepts_newer_and_same_version_and_signed_rollback(tmp_path: Path) -> None:
    keys = Keys()
    trust = TrustStore(tmp_path / "trust.json")
    trust.record("colors", 3)
    for v in (3, 4):
        assert check_manifest(signed(keys, v), keys.root_public, trust, "0.1.0", ["onnxruntime"]).target == "onnx-fp32"
    bound = signed(keys, 1, rollback=True, rollback_device="cam-1", rollback_revision=7)
    ok = check_manifest(bound, keys.root_public, trust, "0.1.0", ["onnxruntime"], device_id="cam-1", revision=7)
    assert ok.manifest.version == 1


@pytest.mark.parametrize(
    "device, revision, bound_to",
    [
        ("cam-2", 7, ("cam-1", 7)),  # another device's rollback replayed here
        ("cam-1", 8, ("cam-1", 7)),  # this device's rollback replayed in a later desired state
        ("cam-1", 7, (None, None)),  # a rollback bound to nothing
    ],
)
def test_a_rollback_is_refused_outside_the_device_and_revision_it_was_signed_for(
    tmp_path: Path, device: str, revision: int, bound_to: tuple[str | None, int | None]
) -> None:
    """Replaying a signed rollback would downgrade a device and lower its trust floor."""
    keys = Keys()
    trust = TrustStore(tmp_path / "trust.json")
    trust.record("colors", 3)
    env = signed(keys, 1, rollback=True, rollback_device=bound_to[0], rollback_revision=bound_to[1])
    with pytest.raises(ManifestRejected, match="^rollback"):
        check_manifest(env, keys.root_public, trust, "0.1.0", ["onnxruntime"], device_id=device, revision=revision)
    assert trust.trusted_version("colors") == 3


def test_trust_never_goes_down_by_record(tmp_path: Path) -> None:
    trust = TrustStore(tmp_path / "trust.json")
    assert trust.trusted_version("colors") == 0
    trust.record("colors", 5)
    trust.record("colors", 2)
    assert TrustStore(tmp_path / "trust.json").trusted_version("colors") == 5
    assert (tmp_path / "trust.json").stat().st_mode & 0o077 == 0


def test_the_measured_recommendation_beats_the_static_target_order(tmp_path: Path) -> None:
    """A compile that found INT8 slower (or less accurate) than FP32 on CPUs recommends FP32; the agent obeys
    it instead of its default CPU order (INT8 first). Without a recommendation the default order holds."""
    keys = Keys()
    art = {
        t: ArtifactEntry(url=f"/api/v1/artifacts/{c * 64}", sha256=c * 64, length=1)
        for t, c in (("onnx-fp32", "a"), ("onnx-int8", "b"), ("onnx-fp16", "c"))
    }
    trust = TrustStore(tmp_path / "trust.json")
    plain = signed(keys, 1, artifacts=art)
    assert check_manifest(plain, keys.root_public, trust, "0.1.0", ["onnxruntime"]).target == "onnx-int8"
    measured = signed(keys, 2, artifacts=art, recommended={"cpu": "onnx-fp32", "cuda": "onnx-fp16"})
    assert check_manifest(measured, keys.root_public, trust, "0.1.0", ["onnxruntime"]).target == "onnx-fp32"
    on_gpu = check_manifest(measured, keys.root_public, trust, "0.1.0", ["onnxruntime"], device_kind="cuda")
    assert on_gpu.target == "onnx-fp16"
    with pytest.raises(ValueError, match="recommended targets .* have no artifact"):
        signed(keys, 3, recommended={"cpu": "onnx-int8"})
