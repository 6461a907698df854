"""`make demo` works every time: the quick demo runs twice in a row on one data folder, without a terminal,
and both runs end with their summary. If this fails, a newcomer's second `make demo` crashes (near-duplicate
samples, a refused policy, a taken port) or leaves the fleet full of stale demo devices."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def _demo(work: Path, port: int) -> str:
    try:
        r = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "demo.py"), "--quick", "--dir", str(work), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=280,
        )
    except subprocess.TimeoutExpired as exc:  # say where it was, and what the server said meanwhile
        server_log = (work / "server.log").read_text()[-3000:] if (work / "server.log").exists() else ""
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout or "")
        raise AssertionError(f"the demo ran past 280 s:\n{out[-4000:]}\n--- server.log\n{server_log}") from None
    assert r.returncode == 0 and "DEMO SUMMARY OK" in r.stdout, f"{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.timeout(700)  # two runs of about 50 s each here; each run's own limit says where a stuck one was
def test_quick_demo_runs_twice_on_one_folder_and_ends_with_its_summary(tmp_path: Path) -> None:
    work, port = tmp_path / "demo", free_port()
    first = _demo(work, port)
    assert "run 1," in first and "training the detector" in first
    assert re.search(r"deploy -> active\s+\d+\.\d s", first)
    second = _demo(work, port)  # same folder, same port: the model is reused, the night shows new scenes
    assert "run 2," in second and "trained on an earlier run" in second and "training the detector" not in second
    seeds = [re.search(r"new scenes \(seed (\d+)", out) for out in (first, second)]
    assert all(seeds) and seeds[0].group(1) != seeds[1].group(1)  # type: ignore[union-attr]
    for out in (first, second):
        assert re.search(r"hard samples\s+\d+", out) and "night mAP50 before" in out
        assert f"http://127.0.0.1:{port}/console" in out and "user demo-admin" in out
        assert "no terminal here" in out and "make demo" in out
    # the second turn labelled new samples (none refused as near-duplicates of the first run's)
    n2 = int(re.search(r"hard samples\s+(\d+)", second).group(1))  # type: ignore[union-attr]
    assert n2 >= 3, second[-3000:]

    # the demo's devices keep their names across runs: two rows, not two per run
    token = (work / "server" / "admin_token").read_text().strip()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "edgeloop"), "server", "--data-dir", str(work / "server"),
         "--port", str(port), "--mqtt-port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url), 30, "server on the demo's data")
        rows = httpx.get(url + "/api/v1/devices", headers={"Authorization": f"Bearer {token}"}).json()
        ids = sorted(d["id"] for d in rows)
        assert ids == ["demo-cam", "demo-night"], ids
    finally:
        proc.terminate()
        proc.wait(20)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
