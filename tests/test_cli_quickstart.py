"""What a newcomer meets in the quick start: agent.yaml written for its owner only, a clear way forward
when a device is enrolled twice, one device shown, and a policy disabled without losing its settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from tests.helpers import Server

pytestmark = pytest.mark.e2e


def test_enroll_show_and_policy_disable(tmp_path: Path) -> None:
    server = Server(tmp_path / "server", None, extra=["--mqtt-broker", "embedded"])
    try:
        assert "/console" in server.proc.log()  # the server says where its console is
        out = tmp_path / "agent.yaml"
        r = server.cli("devices", "enroll", "cam-7", "--out", str(out))
        assert "mode 0600" in r.stdout and stat.S_IMODE(out.stat().st_mode) == 0o600
        cfg = yaml.safe_load(out.read_text())
        assert cfg["device_id"] == "cam-7" and cfg["token"].startswith("edl_dev_")
        again = server.cli("devices", "enroll", "cam-7", check=False)
        assert again.returncode != 0 and "edgeloop devices rotate-token cam-7" in again.stderr
        shown = server.cli("devices", "show", "cam-7").stdout
        assert "id: cam-7" in shown and cfg["token"] not in shown

        server.cli("flywheel", "policy", "colors", "--dataset", "shapes", "--min-labels", "7", "--rollout", "auto")
        server.cli("flywheel", "policy", "colors", "--disable")
        pol = server.http.get("/api/v1/flywheel/policies").json()[0]
        assert pol["enabled"] is False and pol["min_new_labels"] == 7 and pol["rollout"] == "auto"
        new = server.cli("flywheel", "policy", "other", "--min-labels", "3", check=False)
        assert new.returncode != 0 and "give the dataset" in new.stderr
    finally:
        server.stop()
