"""Sources and the inference loop: a vanished camera must not take the agent down or block shutdown,
a slow model must never build a backlog, and a model swap must not lose a frame."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from edge_agent.camera.loop import FrameResult, InferenceLoop, LoadedModel
from edge_agent.camera.sources import FrameSource, describe_source
from edge_agent.decoders.base import decoder_for
from edge_agent.preprocess import Preprocessor
from edge_agent.runtimes import create_runtime
from tests.factories import manifest
from tests.helpers import wait_for


def test_missing_source_reports_retries_and_stops_within_a_second(tmp_path: Path) -> None:
    src = FrameSource(str(tmp_path / "gone.avi")).start()
    wait_for(lambda: src.last_error and "no such file" in src.last_error, 5, "the error to be recorded")
    assert not src.connected
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 1.0
    assert src._thread is not None and not src._thread.is_alive()


def test_credentials_never_appear_in_source_descriptions() -> None:
    assert describe_source("rtsp://admin:hunter2@10.0.0.5/stream") == "rtsp://***@10.0.0.5/stream"
    assert describe_source("/videos/a.mp4") == "/videos/a.mp4"


def test_newest_frame_only_no_backlog(assets: dict[str, Path]) -> None:
    src = FrameSource(str(assets["video"]), pace_file=True).start()
    try:
        wait_for(lambda: src.captured >= 15, 5, "frames captured")
        n = src.captured
        f = src.latest(after=0, timeout=1)
        assert f is not None and f.index >= n  # the consumer gets the newest, not the oldest
        assert src.dropped >= n - 1  # everything it skipped is counted, nothing queued
    finally:
        src.stop()


def test_unpaced_file_is_read_on_demand_every_frame_once(assets: dict[str, Path]) -> None:
    """Offline processing of a file: every frame is inferred exactly once, none decoded only to be dropped."""
    src = FrameSource(str(assets["video"]), loop_file=False, pace_file=False).start()
    seen: list[int] = []
    try:
        while not src.ended or (src.peek() is not None and src.peek().index > (seen[-1] if seen else 0)):
            f = src.latest(after=seen[-1] if seen else 0, timeout=2)
            if f is None:
                break
            seen.append(f.index)
            time.sleep(0.001)  # a consumer slower than the decoder
    finally:
        src.stop()
    assert src.ended
    assert seen == list(range(1, 181))  # 6 s at 30 fps, in order, none skipped
    assert src.dropped == 0


@pytest.mark.parametrize(("asked", "expect_one"), [(1, True), (0, False)])
def test_decoding_uses_one_thread_unless_asked_otherwise(tmp_path: Path, asked: int, expect_one: bool) -> None:
    """FFmpeg's own choice decodes an MPEG-4 stream on every core and takes the model's CPU
    (bench_pipeline.py measures the cost); the agent asks for one decoding thread, and a source can ask
    for FFmpeg's choice back."""
    from tools.bench_pipeline import write_video

    video = write_video(tmp_path / "v.mp4", 1.0, size=(320, 240))
    src = FrameSource(str(video), pace_file=False, decode_threads=asked).start()
    try:
        assert src.latest(after=0, timeout=5) is not None
        assert (src.decoder_threads == 1) is expect_one or os.cpu_count() == 1
    finally:
        src.stop()


def _load(path: Path, version: int) -> LoadedModel:
    m = manifest(version)
    rt = create_runtime("onnxruntime", path)
    rt.warmup()
    return LoadedModel(m, rt, Preprocessor(m.input), decoder_for(m.decoder, len(m.classes)))


def test_hot_swap_between_two_frames_loses_none(assets: dict[str, Path]) -> None:
    results: list[FrameResult] = []
    lock = threading.Lock()

    def sink(fr: FrameResult) -> None:
        with lock:
            results.append(fr)

    src = FrameSource(str(assets["video"]), pace_file=True).start()
    loop = InferenceLoop(src, sinks=[sink], sink_queue=1000)
    a, b = _load(assets["model_v1"], 1), _load(assets["model_v2"], 2)
    loop.swap(a)
    loop.start()
    try:
        wait_for(lambda: len(results) >= 20, 10, "frames on model A")
        dropped_before = src.dropped
        old = loop.swap(b)
        assert old is a
        wait_for(lambda: sum(r.version == 2 for r in results) >= 20, 10, "frames on model B")
    finally:
        loop.stop()
        src.stop()
    with lock:
        idx = [r.frame_index for r in results]
        versions = [r.version for r in results]
    assert idx == sorted(set(idx))  # no frame ran twice
    switch = versions.index(2)
    assert set(versions[:switch]) == {1} and set(versions[switch:]) == {2}  # one clean switch
    # every captured frame in the run was either inferred or counted as skipped (newest-frame policy)
    assert len(idx) + src.dropped >= idx[-1] - idx[0] + 1
    if src.dropped == dropped_before:  # no skip around the swap: the frames on both sides are neighbours
        assert idx[switch] == idx[switch - 1] + 1
    assert loop.sink_dropped == 0 and a.health.errors == 0 and b.health.errors == 0
