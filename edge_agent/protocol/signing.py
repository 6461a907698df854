"""ed25519 signing with a two-level chain, TUF-style.

An offline **root** key certifies an online **release** key (`ReleaseCert`); the release key signs
manifests. Agents pin only the root public key. Verification order for an incoming manifest lives in
`edge_agent.update.checks`; this module only answers "is this envelope signed by a certified key".
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.protocol.manifest import Manifest, canonical_json


class SignatureError(Exception):
    """The envelope is unsigned, wrongly signed, or signed by an uncertified key."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def load_private_key(raw: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(unb64(text))
    except ValueError as exc:
        raise SignatureError(f"not an ed25519 public key: {exc}") from exc


class CertBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    release_key: str = Field(description="base64 raw ed25519 public key of the release key")
    expires_at: datetime


class ReleaseCert(BaseModel):
    """The root key's statement: this release key may sign manifests until `expires_at`.

    `payload` is the exact JSON text that was signed; it is parsed only after its signature checks out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    payload: str
    signature: str

    def body(self) -> CertBody:
        return CertBody.model_validate_json(self.payload)


def certify_release_key(
    root: Ed25519PrivateKey, release_public_b64: str, valid_for: timedelta = timedelta(days=365)
) -> ReleaseCert:
    expires = (datetime.now(timezone.utc) + valid_for).replace(microsecond=0)
    body = CertBody(release_key=release_public_b64, expires_at=expires)
    payload = canonical_json(body.model_dump(mode="json"))
    return ReleaseCert(payload=payload.decode("utf-8"), signature=b64(root.sign(payload)))


class SignedManifest(BaseModel):
    """What travels in desired state: the manifest JSON text, its signature, the release key's certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    payload: str
    signature: str
    cert: ReleaseCert

    def unverified_manifest(self) -> Manifest:
        """Parse without checking the signature: for display on the server only, never for trust."""
        return Manifest.model_validate_json(self.payload)


# Manifest fields added after the first release, left out of the signed body while unset.
OPTIONAL_FIELDS = ("rollback_device", "rollback_revision")


def sign_manifest(manifest: Manifest, release: Ed25519PrivateKey, cert: ReleaseCert) -> SignedManifest:
    if cert.body().release_key != public_key_b64(release):
        raise ValueError("the certificate does not certify this release key")
    body = manifest.model_dump(mode="json")
    for key in OPTIONAL_FIELDS:  # absent rather than null: agents that predate a field still read the rest
        if body.get(key) is None:
            body.pop(key, None)
    payload = canonical_json(body)
    return SignedManifest(payload=payload.decode("utf-8"), signature=b64(release.sign(payload)), cert=cert)


def verify_signed_manifest(envelope: SignedManifest, root_public_b64: str, now: datetime | None = None) -> Manifest:
    """Return the manifest if the chain root -> release key -> manifest holds; raise SignatureError otherwise.

    Nothing signed is parsed before its signature has been checked.
    """
    now = now or datetime.now(timezone.utc)
    root = load_public_key(root_public_b64)
    cert = envelope.cert
    try:
        root.verify(unb64(cert.signature), cert.payload.encode("utf-8"))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("release key certificate is not signed by the pinned root key") from exc
    try:
        body = cert.body()
    except ValidationError as exc:
        raise SignatureError("release key certificate is malformed") from exc
    if now >= body.expires_at:
        raise SignatureError(f"release key certificate expired at {body.expires_at.isoformat()}")
    release = load_public_key(body.release_key)
    try:
        release.verify(unb64(envelope.signature), envelope.payload.encode("utf-8"))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("manifest signature does not match its contents") from exc
    try:
        return Manifest.model_validate_json(envelope.payload)
    except ValidationError as exc:
        raise SignatureError(f"signed manifest does not validate: {exc.errors()[0]['msg']}") from exc


def parse_signed_manifest(data: object) -> SignedManifest:
    try:
        return SignedManifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SignatureError(f"malformed signed manifest: {first['loc']}: {first['msg']}") from exc
