"""Signatures: an agent must run only manifests signed by a release key its pinned root certified."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from edge_agent.protocol.manifest import DecoderSpec
from edge_agent.protocol.signing import (
    SignatureError,
    SignedManifest,
    certify_release_key,
    generate_key,
    parse_signed_manifest,
    public_key_b64,
    sign_manifest,
    verify_signed_manifest,
)
from tests.factories import Keys, manifest, signed


def test_valid_chain_verifies_and_survives_json_transport() -> None:
    keys = Keys()
    env = signed(keys, version=4)
    wire = SignedManifest.model_validate_json(env.model_dump_json())
    m = verify_signed_manifest(wire, keys.root_public)
    assert (m.model, m.version) == ("colors", 4)


def test_edited_manifest_fails() -> None:
    keys = Keys()
    env = signed(keys)
    forged = env.model_copy(update={"payload": env.payload.replace('"version":1', '"version":9')})
    with pytest.raises(SignatureError, match="manifest signature"):
        verify_signed_manifest(forged, keys.root_public)


def test_key_not_certified_by_pinned_root_fails() -> None:
    keys, other = Keys(), Keys()
    with pytest.raises(SignatureError, match="root"):
        verify_signed_manifest(signed(other), keys.root_public)


def test_release_key_swapped_under_a_valid_cert_fails() -> None:
    keys = Keys()
    rogue = generate_key()
    payload_env = sign_manifest(manifest(), keys.release, keys.cert)
    rogue_sig = SignedManifest(payload=payload_env.payload, signature=payload_env.signature, cert=keys.cert)
    # re-sign with a key the cert does not name
    from edge_agent.protocol.signing import b64

    forged = rogue_sig.model_copy(update={"signature": b64(rogue.sign(payload_env.payload.encode()))})
    with pytest.raises(SignatureError, match="manifest signature"):
        verify_signed_manifest(forged, keys.root_public)


def test_expired_release_cert_fails() -> None:
    keys = Keys()
    keys.cert = certify_release_key(keys.root, public_key_b64(keys.release), valid_for=timedelta(seconds=1))
    env = signed(keys)
    later = datetime.now(timezone.utc) + timedelta(days=1)
    with pytest.raises(SignatureError, match="expired"):
        verify_signed_manifest(env, keys.root_public, now=later)


def test_unsigned_or_garbage_envelope_is_a_signature_error() -> None:
    keys = Keys()
    with pytest.raises(SignatureError, match="malformed"):
        parse_signed_manifest({"payload": "{}"})
    env = signed(keys).model_copy(update={"signature": "not base64!"})
    with pytest.raises(SignatureError):
        verify_signed_manifest(env, keys.root_public)


def test_manifest_rejects_task_decoder_mismatch() -> None:
    with pytest.raises(ValueError, match="needs decoder"):
        manifest(task="detect", decoder=DecoderSpec(type="classify"))
