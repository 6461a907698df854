"""Keys that outlive their first year: the release certificate's expiry is visible, the release key
rotates (certified where the root key is, or by the root key on an offline machine), and agents trust
the new key through the root they pinned, while manifests signed before stay valid. If these fail, a
fleet stops accepting any model a year after its server first started."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol.signing import (
    certify_release_key,
    generate_key,
    load_private_key,
    private_key_bytes,
    public_key_b64,
    sign_manifest,
    verify_signed_manifest,
)
from fleet_server.keys import KeyRotationError, ensure_keys, import_cert, key_status
from tests.factories import manifest
from tests.helpers import Server

EDGELOOP = Path(sys.executable).parent / "edgeloop"


def _keys(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGELOOP), "keys", *args, "--data-dir", str(data)], capture_output=True, text=True)


def test_the_release_key_rotates_with_the_root_kept_offline(tmp_path: Path) -> None:
    data = tmp_path / "server"
    before = ensure_keys(data)
    old_manifest = sign_manifest(manifest(1), before.release, before.cert)
    offline = tmp_path / "offline"
    offline.mkdir()
    shutil.move(str(data / "keys" / "root.key"), offline / "root.key")  # as the keys' README line asks

    status = json.loads(_keys(data, "status", "--json").stdout)
    assert status["release_days_left"] > 360 and not status["root_key_on_this_machine"]
    r = _keys(data, "rotate-release", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["installed"] is False
    request = data / "keys" / "release.request.json"
    cert = tmp_path / "release.cert.json"
    subprocess.run(
        [str(EDGELOOP), "keys", "certify", "--root-key", str(offline / "root.key"), "--request", str(request),
         "--out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    r = _keys(data, "import", str(cert), "--json")
    assert r.returncode == 0, r.stderr
    after = ensure_keys(data)
    assert after.cert.body().release_key != before.cert.body().release_key
    assert (data / "keys" / "release.key.previous").is_file() and not request.exists()
    new_manifest = sign_manifest(manifest(2), after.release, after.cert)
    for envelope in (old_manifest, new_manifest):  # the agent's check, against the one root it pinned
        assert verify_signed_manifest(envelope, before.root_public).model == "colors"


def test_a_certificate_from_another_root_or_for_another_key_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "server"
    ring = ensure_keys(data)
    (data / "keys" / "release.key.pending").write_bytes(private_key_bytes(generate_key()))
    pending = load_private_key((data / "keys" / "release.key.pending").read_bytes())
    foreign = certify_release_key(generate_key(), public_key_b64(pending))
    with pytest.raises(KeyRotationError, match="not signed by this fleet's root"):
        import_cert(data, foreign)
    root = load_private_key((data / "keys" / "root.key").read_bytes())
    wrong_key = certify_release_key(root, public_key_b64(generate_key()))
    with pytest.raises(KeyRotationError, match="another release key"):
        import_cert(data, wrong_key)
    assert ensure_keys(data).cert == ring.cert  # nothing changed


def test_an_expiring_certificate_is_flagged(tmp_path: Path, browser: Any) -> None:
    data = tmp_path / "server"
    ensure_keys(data)
    root = load_private_key((data / "keys" / "root.key").read_bytes())
    release = load_private_key((data / "keys" / "release.key").read_bytes())
    soon = certify_release_key(root, public_key_b64(release), timedelta(days=10))
    (data / "keys" / "release.cert.json").write_text(soon.model_dump_json())
    assert "rotate-release" in (key_status(data)["warning"] or "")
    r = _keys(data, "status")
    assert r.returncode == 1 and "WARNING" in r.stdout
    # a running server says so on every console page, and to its metrics
    server = Server(data, None)
    try:
        r = server.http.post("/api/v1/users", json={"name": "kim", "role": "viewer", "password": "Viewer-pass-22"})
        assert r.status_code == 201, r.text
        page = browser.new_context().new_page()
        page.goto(f"{server.url}/console/login")
        page.fill("input[name=name]", "kim")
        page.fill("input[name=password]", "Viewer-pass-22")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/console/fleet$"))
        warning = page.locator("#key-warning").text_content() or ""
        assert "expires in 10 days" in warning and "edgeloop keys rotate-release" in warning
        assert "edgeloop_release_cert_days_left 9.9" in server.http.get("/metrics").text
    finally:
        server.stop()
    r = _keys(data, "rotate-release")  # the root key is here: certified and installed at once
    assert r.returncode == 0 and "restart the server" in r.stdout
    assert key_status(data)["warning"] is None
