"""Builders for signed manifests used by the unit tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from edge_agent.protocol.manifest import ArtifactEntry, DecoderSpec, InputSpec, Manifest
from edge_agent.protocol.signing import (
    ReleaseCert,
    SignedManifest,
    certify_release_key,
    generate_key,
    public_key_b64,
    sign_manifest,
)


class Keys:
    def __init__(self) -> None:
        self.root = generate_key()
        self.release = generate_key()
        self.cert: ReleaseCert = certify_release_key(self.root, public_key_b64(self.release))
        self.root_public = public_key_b64(self.root)


def manifest(version: int = 1, **over: Any) -> Manifest:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    data: dict[str, Any] = dict(
        model="colors",
        version=version,
        task="classify",
        classes=("red", "green", "blue"),
        input=InputSpec(shape=(1, 3, 64, 64)),
        decoder=DecoderSpec(type="classify"),
        artifacts={"onnx-fp32": ArtifactEntry(url="/api/v1/artifacts/" + "a" * 64, sha256="a" * 64, length=10)},
        created_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(days=1),
    )
    data.update(over)
    return Manifest(**data)


def signed(keys: Keys, version: int = 1, **over: Any) -> SignedManifest:
    return sign_manifest(manifest(version, **over), keys.release, keys.cert)
