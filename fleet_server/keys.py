"""Secrets the server keeps in its data dir: the admin token and the signing keys.

On first start: an offline **root** key (move `keys/root.key` off the server once the release key is
certified), a **release** key that signs manifests, and the root's certificate for it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.fsutil import atomic_write_bytes
from edge_agent.protocol.signing import (
    ReleaseCert,
    certify_release_key,
    generate_key,
    load_private_key,
    private_key_bytes,
    public_key_b64,
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
