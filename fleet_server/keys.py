"""Secrets the server keeps in its data dir: the admin token and the signing keys.

On first start: an offline **root** key (move `keys/root.key` off the server once the release key is
certified), a **release** key that signs manifests, and the root's certificate for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.fsutil import atomic_write_bytes
from edge_agent.protocol.signing import (
    ReleaseCert,
    SignatureError,
    certify_release_key,
    generate_key,
    load_private_key,
    load_public_key,
    private_key_bytes,
    public_key_b64,
    unb64,
)

log = logging.getLogger(__name__)


@dataclass
class KeyRing:
    root_public: str
    release: Ed25519PrivateKey
    cert: ReleaseCert
    key_dir: Path


def ensure_keys(data_dir: Path) -> KeyRing:
    kdir = data_dir / "keys"
    kdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_pub_path, release_path, cert_path = kdir / "root.pub", kdir / "release.key", kdir / "release.cert.json"
    if not root_pub_path.exists():
        root = generate_key()
        release = generate_key()
        cert = certify_release_key(root, public_key_b64(release))
        atomic_write_bytes(kdir / "root.key", private_key_bytes(root), mode=0o600)
        atomic_write_bytes(release_path, private_key_bytes(release), mode=0o600)
        atomic_write_bytes(cert_path, cert.model_dump_json().encode(), mode=0o644)
        atomic_write_bytes(root_pub_path, public_key_b64(root).encode(), mode=0o644)
        log.info("created signing keys in %s (move root.key offline)", kdir)
    return KeyRing(
        root_public=root_pub_path.read_text().strip(),
        release=load_private_key(release_path.read_bytes()),
        cert=ReleaseCert.model_validate_json(cert_path.read_text()),
        key_dir=kdir,
    )


def ensure_admin_token(data_dir: Path, given: str | None) -> tuple[str, Path]:
    path = data_dir / "admin_token"
    if given:
        return given, path
    if path.exists():
        return path.read_text().strip(), path
    token = "edl_admin_" + secrets.token_urlsafe(24)
    atomic_write_bytes(path, token.encode(), mode=0o600)
    return token, path


def new_device_token() -> str:
    return "edl_dev_" + secrets.token_urlsafe(24)


def token_hash(token: str) -> str:

    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# -- the release key's life: status, rotation, offline certification ------------------------------------
WARN_DAYS = 30
CERT_DAYS = 365


class KeyRotationError(Exception):
    """A key operation that cannot be done as asked; str() says what to do instead."""


def fingerprint(public_b64: str) -> str:
    return hashlib.sha256(public_b64.encode()).hexdigest()[:16]


def key_status(data_dir: Path, now: datetime | None = None) -> dict[str, Any]:
    """What an operator needs to know: which keys, when the release certificate expires, what to do."""
    kdir = data_dir / "keys"
    if not (kdir / "root.pub").is_file():
        raise KeyRotationError(f"no keys in {kdir}: start the server once to create them")
    ring = ensure_keys(data_dir)
    body = ring.cert.body()
    now = now or datetime.now(timezone.utc)
    days = (body.expires_at - now).total_seconds() / 86400
    return {
        "key_dir": str(kdir),
        "root_public_key": ring.root_public,
        "root_fingerprint": fingerprint(ring.root_public),
        "root_key_on_this_machine": (kdir / "root.key").is_file(),
        "release_fingerprint": fingerprint(body.release_key),
        "release_expires_at": body.expires_at.isoformat(),
        "release_days_left": round(days, 1),
        "warning": (
            f"the release certificate expires in {days:.0f} days: run `edgeloop keys rotate-release`"
            if days <= WARN_DAYS
            else None
        ),
        "pending_request": (kdir / "release.request.json").is_file(),
    }


def certify_request(root_key: Path, request: dict[str, Any], days: int = CERT_DAYS) -> ReleaseCert:
    """On the offline machine: the root's certificate for a requested release key."""
    try:
        root = load_private_key(root_key.read_bytes())
        release_pub = str(request["release_key"])
        load_public_key(release_pub)
    except (OSError, ValueError, KeyError, SignatureError) as exc:
        raise KeyRotationError(f"cannot certify: {exc}") from None
    return certify_release_key(root, release_pub, timedelta(days=days))


def rotate_release(data_dir: Path, days: int = CERT_DAYS) -> dict[str, Any]:
    """A new release key. With the root key here it is certified and installed at once; without it (the
    root kept offline, as it should be), a request is written for `edgeloop keys certify` elsewhere."""
    kdir = data_dir / "keys"
    ring = ensure_keys(data_dir)
    new = generate_key()
    atomic_write_bytes(kdir / "release.key.pending", private_key_bytes(new), mode=0o600)
    request = {"release_key": public_key_b64(new), "root_fingerprint": fingerprint(ring.root_public)}
    if (kdir / "root.key").is_file():
        cert = certify_request(kdir / "root.key", request, days)
        return import_cert(data_dir, cert)
    atomic_write_bytes(kdir / "release.request.json", json.dumps(request, indent=2).encode(), mode=0o644)
    return {"installed": False, "request": str(kdir / "release.request.json"), **request}


def import_cert(data_dir: Path, cert: ReleaseCert) -> dict[str, Any]:
    """Install the pending release key with its certificate, once the certificate checks out against the
    pinned root and names that key. Manifests signed before stay valid: each carries its own certificate."""
    kdir = data_dir / "keys"
    ring = ensure_keys(data_dir)
    pending = kdir / "release.key.pending"
    if not pending.is_file():
        raise KeyRotationError("no pending release key: run `edgeloop keys rotate-release` first")
    key = load_private_key(pending.read_bytes())
    try:
        load_public_key(ring.root_public).verify(unb64(cert.signature), cert.payload.encode("utf-8"))
    except (InvalidSignature, SignatureError, ValueError):
        raise KeyRotationError("the certificate is not signed by this fleet's root key") from None
    body = cert.body()
    if body.release_key != public_key_b64(key):
        raise KeyRotationError("the certificate is for another release key than the pending one")
    if body.expires_at <= datetime.now(timezone.utc):
        raise KeyRotationError(f"the certificate expired at {body.expires_at.isoformat()}")
    old = kdir / "release.key"
    if old.is_file():
        atomic_write_bytes(kdir / "release.key.previous", old.read_bytes(), mode=0o600)
    atomic_write_bytes(old, pending.read_bytes(), mode=0o600)
    atomic_write_bytes(kdir / "release.cert.json", cert.model_dump_json().encode(), mode=0o644)
    pending.unlink()
    (kdir / "release.request.json").unlink(missing_ok=True)
    log.info("installed release key %s, certified until %s", fingerprint(body.release_key), body.expires_at)
    return {"installed": True, "release_fingerprint": fingerprint(body.release_key), "expires_at": body.expires_at}
