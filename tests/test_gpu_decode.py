"""Where a camera's frames are decoded: on the GPU where the box has a path for it, else on the CPU, and the
camera says which (and why not the GPU). This machine has no GPU, no CUDA build of OpenCV and no Jetson:
the CPU fallbacks run for real here; the cudacodec path runs against a stand-in for OpenCV's CUDA module
(said in that test), and the Jetson path is checked as the pipeline string it would hand GStreamer."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.camera.gpu_decode import jetson_decode_pipeline
from edge_agent.camera.loop import InferenceLoop
from edge_agent.camera.sources import FrameSource
from edge_agent.config import SourceConfig
from tests.helpers import wait_for


def test_jetson_decode_pipelines_by_source_kind() -> None:
    rtsp = jetson_decode_pipeline("rtsp://cam:pw@10.0.0.5/stream1", "h265")
    assert rtsp == (
        'rtspsrc location="rtsp://cam:pw@10.0.0.5/stream1" latency=200 ! rtph265depay ! h265parse ! '
        "nvv4l2decoder ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )
    mp4 = jetson_decode_pipeline("/data/yard.mp4")
    assert mp4 is not None and mp4.startswith('filesrc location="/data/yard.mp4" ! qtdemux ! h264parse ! nvv4l2decoder')
    mkv = jetson_decode_pipeline("/data/yard.MKV")
    assert mkv is not None and "matroskademux" in mkv
    for none in ("0", "/dev/video0", "http://cam/mjpeg", "/data/clip.avi", "videotestsrc ! appsink"):
        assert jetson_decode_pipeline(none) is None, none
    with pytest.raises(ValueError, match="codec must be one of h264, h265"):
        jetson_decode_pipeline("rtsp://x/y", "vp9")
    with pytest.raises(ValueError):
        SourceConfig(uri="rtsp://x/y", codec="vp9")  # type: ignore[arg-type]


def _frames(src: FrameSource, n: int, timeout: float = 10) -> np.ndarray:
    last = 0
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline and last < n:
        f = src.latest(last, 1.0)
        if f is not None:
            last, got = f.index, f.image
    assert last >= n, f"only {last} frames from {src.spec} ({src.last_error})"
    assert got is not None
    return got


def test_gpu_decode_asked_on_a_box_without_one_decodes_on_the_cpu_and_says_why(
    assets: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "edge_agent.camera.sources")
    src = FrameSource(str(assets["video"]), pace_fps=300, decode="gpu").start()
    try:
        image = _frames(src, 30)
        assert image.shape == (240, 320, 3)
        assert src.decoder == "cpu"
        assert src.decoder_note == "OpenCV's FFmpeg took no hardware decoder"
        row = InferenceLoop([src]).per_source()[0]
        assert (row["decoder"], row["decoder_note"]) == ("cpu", src.decoder_note)
        said = [r.getMessage() for r in caplog.records if "decoding on the CPU" in r.getMessage()]
        assert len(said) == 1 and said[0].endswith("took no hardware decoder")
    finally:
        src.stop()


def test_auto_decode_on_a_box_without_a_gpu_is_the_cpu_path_with_nothing_to_explain(assets: dict[str, Path]) -> None:
    src = FrameSource(str(assets["video"]), pace_fps=300, decode="auto", gpu=False).start()
    try:
        _frames(src, 10)
        assert (src.decoder, src.decoder_note) == ("cpu", None)
    finally:
        src.stop()


def test_a_jetson_pipeline_that_does_not_open_falls_back_to_the_cpu(tmp_path: Path) -> None:
    """Here GStreamer has no nvv4l2decoder (no Jetson): the pipeline is built, fails to open, and the camera
    decodes on the CPU and says so."""
    path = tmp_path / "yard.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, (160, 120))
    for i in range(30):
        writer.write(np.full((120, 160, 3), i * 8, np.uint8))
    writer.release()
    src = FrameSource(str(path), pace_fps=300, decode="auto", gpu=True, jetson=True).start()
    try:
        _frames(src, 10)
        assert src.decoder == "cpu"
        assert src.decoder_note is not None and src.decoder_note.startswith("the nvv4l2decoder pipeline did not open")
    finally:
        src.stop()


class _GpuMat:
    def __init__(self, image: np.ndarray) -> None:
        self._image = image

    def download(self) -> np.ndarray:
        return cv2.cvtColor(self._image, cv2.COLOR_BGR2BGRA)  # NVDEC hands back BGRA by default


class _Reader:
    def __init__(self, spec: str) -> None:
        self._cap = cv2.VideoCapture(spec)
        if not self._cap.isOpened():
            raise cv2.error("cannot open " + spec)

    def nextFrame(self) -> tuple[bool, Any]:  # noqa: N802 - OpenCV's name
        ok, image = self._cap.read()
        return ok, (_GpuMat(image) if ok else None)

    def format(self) -> Any:
        return type("FormatInfo", (), {"fps": self._cap.get(cv2.CAP_PROP_FPS)})()


class _CudaCodec:
    created = 0

    def createVideoReader(self, spec: str) -> _Reader:  # noqa: N802 - OpenCV's name
        _CudaCodec.created += 1
        return _Reader(spec)


def test_the_cudacodec_path_serves_bgr_frames_and_loops_a_file(
    assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for `cv2.cudacodec`: no OpenCV here is built with CUDA, and there is no GPU. It decodes on
    the CPU and hands back BGRA like NVDEC does; what is tested is the agent's side of that API (BGR out,
    the file restarted at its end, the decoder reported)."""
    monkeypatch.setattr(cv2, "cudacodec", _CudaCodec(), raising=False)
    monkeypatch.setattr(cv2.cuda, "getCudaEnabledDeviceCount", lambda: 1)
    src = FrameSource(str(assets["video"]), pace_fps=2000, decode="auto", gpu=True).start()
    try:
        image = _frames(src, 200)  # the file has 180 frames: it looped
        assert image.shape == (240, 320, 3)
        assert (src.decoder, src.decoder_note) == ("cudacodec", None)
        assert _CudaCodec.created >= 2
    finally:
        src.stop()
    wait_for(lambda: not src.connected, 5, "capture stopped")
