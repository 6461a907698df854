"""Network cameras: an HTTP MJPEG stream that stops sending without closing (the classic stuck RTSP/MJPEG
camera) must be noticed, reconnected and recovered; a camera that disappears must show as `down` with the
reason in the fleet, while the agent keeps running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.camera.sources import FrameSource
from tests.helpers import Server, free_port, start_agent, wait_for
from tools.mjpeg_server import MjpegCamera


@pytest.fixture()
def camera() -> Iterator[MjpegCamera]:
    cam = MjpegCamera()
    yield cam
    cam.close()


def test_stalled_mjpeg_stream_is_detected_and_recovered(camera: MjpegCamera) -> None:
    src = FrameSource(camera.url, stall_timeout_s=1.0).start()
    try:
        wait_for(lambda: src.captured >= 10, 10, "frames from the MJPEG camera")
        camera.stall.set()  # connection stays open, no more frames
        wait_for(lambda: src.reconnects >= 1, 6, "stall detected and reconnect started")
        assert "stalled" in (src.last_error or "")
        camera.stall.clear()
        n = src.captured
        wait_for(lambda: src.captured >= n + 10, 10, "frames again after recovery")
    finally:
        t0 = time.monotonic()
        src.stop()
        assert time.monotonic() - t0 < 1.0


def test_vanished_camera_shows_down_in_the_fleet(
    tmp_path: Path, mosquitto: str, assets: dict[str, Path], camera: MjpegCamera
) -> None:
    fleet = Server(tmp_path / "server", mosquitto)
    agent = None
    try:
        fleet.push(assets["model_v1"])
        enrolled = fleet.enroll("cam-net")
        fleet.cli("deploy", "colors:1", "--device", "cam-net", "--health-window", "0.5")
        agent = start_agent(tmp_path, enrolled, camera.url)
        wait_for(
            lambda: (
                (d := fleet.device("cam-net"))["state"] == "committed"
                and (d["fps"] or 0) > 0
                and d["last_prediction"]
                and d["last_prediction"][0]["label"] == "red"
            ),
            30,
            "serving the camera",
        )
        camera.close()
        dev = wait_for(lambda: (d := fleet.device("cam-net"))["source_ok"] is False and d, 30, "source reported down")
        assert dev["source_error"]
        assert agent.alive() and dev["online"] and dev["version"] == 1
    finally:
        if agent:
            agent.stop()
        fleet.stop()


@pytest.fixture()
def rtsp_camera() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real RTSP server (GStreamer, MJPEG over RTP) in a separate process under the system Python."""
    proc = subprocess.Popen(
        ["/usr/bin/python3", str(Path(__file__).parent.parent / "tools" / "rtsp_server.py"), str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("rtsp://"), "the RTSP test server did not start: run `make test` to install GStreamer"
    yield proc, url
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(5)


def test_rtsp_camera_that_stops_sending_without_disconnecting_is_recovered(
    rtsp_camera: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = rtsp_camera
    src = FrameSource(url, stall_timeout_s=1.0).start()
    try:
        wait_for(lambda: src.captured >= 10, 20, "frames from the RTSP camera")
        os.kill(proc.pid, signal.SIGSTOP)  # the socket stays open; nothing arrives
        wait_for(lambda: src.reconnects >= 1, 10, "stall noticed and reconnect started")
        assert "stalled" in (src.last_error or "")
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGCONT)
        n = src.captured
        wait_for(lambda: src.captured >= n + 10, 30, "frames again after the camera came back")
    finally:
        t0 = time.monotonic()
        src.stop()
        assert time.monotonic() - t0 < 1.0
