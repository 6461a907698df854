"""Batched inference across cameras: one run serves the newest unseen frame of many cameras.

A box with many cameras relies on this: every camera is served (fairly, none starves), no frame is served
twice, a model swap between two batches drops nothing, each camera gets its own result from the shared
batch, and a model that cannot batch is still served, one frame at a time.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edge_agent.camera.loop import FrameResult, InferenceLoop, LoadedModel
from edge_agent.camera.sources import FrameSource
from edge_agent.decoders.base import decoder_for
from edge_agent.preprocess import Preprocessor
from edge_agent.runtimes import RuntimeOptions, create_runtime
from edge_agent.runtimes.onnxruntime_rt import OnnxRuntime
from model_zoo.builders.color_classifier import build_color_classifier
from tests.factories import manifest
from tests.helpers import wait_for

COLORS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}  # BGR


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("batch-models")
    return {
        "dynamic": build_color_classifier(d / "dyn.onnx", batch="batch"),
        "dynamic_v2": build_color_classifier(d / "dyn2.onnx", sharpness=20.0, batch="batch"),
        "fixed4": build_color_classifier(d / "fixed4.onnx", batch=4),
        "single": build_color_classifier(d / "single.onnx"),
    }


def _load(path: Path, version: int = 1) -> LoadedModel:
    m = manifest(version)
    rt = create_runtime("onnxruntime", path)
    rt.warmup()
    return LoadedModel(m, rt, Preprocessor(m.input), decoder_for(m.decoder, len(m.classes)))


def _image(name: str) -> np.ndarray:
    return np.full((48, 64, 3), COLORS[name], np.uint8)


@pytest.mark.parametrize("kind, max_batch", [("single", 1), ("fixed4", 4), ("dynamic", None)])
def test_each_frame_gets_its_own_result_from_one_run(models: dict[str, Path], kind: str, max_batch: int | None) -> None:
    model = _load(models[kind])
    assert model.max_batch == max_batch
    names = ["red", "blue", "green", "green", "red", "blue"]  # six: a fixed batch of 4 runs twice, padded
    batched = model.infer_batch([_image(n) for n in names])
    with ThreadPoolExecutor(4) as pool:  # frames preprocessed in parallel land in their own slots
        pooled = model.infer_batch([_image(n) for n in names], pool=pool)
    one_by_one = [model.infer(_image(n)) for n in names]
    classes = ["red", "green", "blue"]
    assert [classes[r.top1] for r in batched] == names == [classes[r.top1] for r in one_by_one]  # type: ignore[attr-defined]
    for a, p, b in zip(batched, pooled, one_by_one, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)  # type: ignore[attr-defined]
        np.testing.assert_allclose(p.scores, b.scores, atol=1e-5)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "limit, sizes", [(1, [1]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (64, [1, 2, 4, 8, 16, 32, 64])]
)
def test_a_dynamic_model_runs_a_few_warmed_shapes(models: dict[str, Path], limit: int, sizes: list[int]) -> None:
    """Each new input shape costs a GPU a slow first run; a batch is padded to one of these few, warmed ones."""
    assert _load(models["dynamic"]).buckets(limit) == sizes
    assert _load(models["fixed4"]).buckets(limit) == [4]


def _run(
    loop: InferenceLoop, sources: list[FrameSource], until: int, results: list[FrameResult]
) -> dict[str, list[int]]:
    loop.start()
    try:
        wait_for(lambda: len(results) >= until, 20, f"{until} frames served")
    finally:
        loop.stop()
        for s in sources:
            s.stop()
    per: dict[str, list[int]] = {}
    for r in results:
        per.setdefault(r.source, []).append(r.frame_index)
    return per


def _cameras(video: Path, n: int, fps: float = 25.0) -> list[FrameSource]:
    return [FrameSource(str(video), pace_file=True, pace_fps=fps, name=f"cam{i}").start() for i in range(n)]


def _collector() -> tuple[list[FrameResult], object]:
    results: list[FrameResult] = []
    lock = threading.Lock()

    def sink(fr: FrameResult) -> None:
        with lock:
            results.append(fr)

    return results, sink


def test_batched_loop_serves_every_camera_fairly_and_no_frame_twice(
    models: dict[str, Path], assets: dict[str, Path]
) -> None:
    cams = _cameras(assets["video"], 4)
    results, sink = _collector()
    loop = InferenceLoop(cams, sinks=[sink], sink_queue=10_000, batch=4)  # type: ignore[list-item]
    loop.swap(_load(models["dynamic"]))
    per = _run(loop, cams, 200, results)
    assert set(per) == {"cam0", "cam1", "cam2", "cam3"}
    counts = [len(v) for v in per.values()]
    assert min(counts) >= 0.6 * max(counts), counts  # no camera starves
    for idx in per.values():
        assert idx == sorted(set(idx))  # each camera's frames once, in order
    assert max(loop.batch_sizes) > 1  # frames of several cameras did share runs
    assert sum(n * k for n, k in loop.batch_sizes.items()) == len(results)


def test_hot_swap_between_two_batches_drops_nothing(models: dict[str, Path], assets: dict[str, Path]) -> None:
    cams = _cameras(assets["video"], 3)
    results, sink = _collector()
    loop = InferenceLoop(cams, sinks=[sink], sink_queue=10_000, batch=3)  # type: ignore[list-item]
    a, b = _load(models["dynamic"], 1), _load(models["dynamic_v2"], 2)
    loop.swap(a)
    loop.start()
    try:
        wait_for(lambda: len(results) >= 60, 15, "frames on model A")
        dropped = [c.dropped for c in cams]
        loop.swap(b)
        wait_for(lambda: sum(r.version == 2 for r in results) >= 60, 15, "frames on model B")
    finally:
        loop.stop()
        for c in cams:
            c.stop()
    for cam in ("cam0", "cam1", "cam2"):
        mine = [r for r in results if r.source == cam]
        idx, versions = [r.frame_index for r in mine], [r.version for r in mine]
        assert idx == sorted(set(idx))
        switch = versions.index(2)
        assert set(versions[:switch]) == {1} and set(versions[switch:]) == {2}
        c = cams[int(cam[-1])]
        if c.dropped == dropped[int(cam[-1])]:  # no newest-frame skip around the swap: neighbours
            assert idx[switch] == idx[switch - 1] + 1
    assert a.health.errors == 0 and b.health.errors == 0 and loop.sink_dropped == 0


def test_a_model_that_cannot_batch_is_served_one_frame_at_a_time(
    models: dict[str, Path], assets: dict[str, Path]
) -> None:
    """Mixed models: a batch-1 model swapped in under a loop set for batches keeps every camera served."""
    cams = _cameras(assets["video"], 3)
    results, sink = _collector()
    loop = InferenceLoop(cams, sinks=[sink], sink_queue=10_000, batch=8)  # type: ignore[list-item]
    single = _load(models["single"], 3)
    assert loop.batch_limit(single) == 1 and loop.batch_limit(_load(models["fixed4"])) == 4
    loop.swap(single)
    per = _run(loop, cams, 60, results)
    assert set(per) == {"cam0", "cam1", "cam2"} and set(loop.batch_sizes) == {1}
    assert Counter(r.version for r in results) == {3: len(results)}


def test_on_a_gpu_every_batch_is_padded_to_one_warmed_shape(models: dict[str, Path]) -> None:
    """There is no GPU here: the runtime below is the real onnxruntime session on the CPU, told it runs on a
    GPU. What is checked is the policy the H200 measurements called for: one shape, padded, results intact."""

    class GpuSession(OnnxRuntime):
        @property
        def on_gpu(self) -> bool:
            return True

    m = manifest(1)
    rt = GpuSession(models["dynamic"], RuntimeOptions())
    model = LoadedModel(m, rt, Preprocessor(m.input), decoder_for(m.decoder, len(m.classes)))
    assert model.buckets(8) == [8]
    shapes: list[int] = []
    run = rt.run
    rt.run = lambda x: shapes.append(len(x)) or run(x)  # type: ignore[method-assign]
    names = ["red", "green", "blue"]
    got = model.infer_batch([_image(n) for n in names], 8)
    assert [["red", "green", "blue"][r.top1] for r in got] == names  # type: ignore[attr-defined]
    assert shapes == [8]


def test_a_gpu_that_keeps_failing_moves_the_model_to_the_cpu_and_the_cameras_stay_served(
    models: dict[str, Path], assets: dict[str, Path]
) -> None:
    """There is no GPU here: the runtime below is the real onnxruntime session on the CPU, told it runs on a GPU,
    that starts failing the way a GPU out of memory does. What is checked: one bad error is not a fallback,
    three in a row are; the model then serves from the CPU (the same artifact, a new session), says why, and
    every camera keeps getting results."""
    from edge_agent.runtimes.fallback import GPU_FAULTS_BEFORE_CPU, is_gpu_fault

    assert is_gpu_fault(RuntimeError("CUDA failure 2: out of memory ; GPU=0"))
    assert not is_gpu_fault(ValueError("frame has 4 channels, expected 3"))

    class FailingGpu(OnnxRuntime):
        failing = False

        @property
        def on_gpu(self) -> bool:
            return True

        def run(self, x: np.ndarray) -> list[np.ndarray]:
            if self.failing:
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory")
            return super().run(x)

    m = manifest(1)
    rt = FailingGpu(models["dynamic"], RuntimeOptions())
    model = LoadedModel(m, rt, Preprocessor(m.input), decoder_for(m.decoder, len(m.classes)))
    cams = _cameras(assets["video"], 2)
    results, sink = _collector()
    loop = InferenceLoop(cams, sinks=[sink], sink_queue=10_000, batch=2)  # type: ignore[list-item]
    loop.swap(model)
    loop.start()
    try:
        wait_for(lambda: len(results) > 10, 20, "frames served on the 'GPU'")
        rt.failing = True
        wait_for(lambda: model.fallback is not None, 20, "the move to the CPU")
        assert model.health.errors >= GPU_FAULTS_BEFORE_CPU and "out of memory" in model.fallback
        assert model.runtime is not rt and not model.runtime.on_gpu
        assert model.runtime.providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
        served = len(results)
        wait_for(lambda: len(results) > served + 10, 20, "frames served on the CPU")
        assert {r.source for r in results[served:]} == {"cam0", "cam1"}
    finally:
        loop.stop()
        for c in cams:
            c.stop()


@pytest.mark.parametrize(
    ("overhead_ms", "per_image_ms", "on_gpu", "chosen"),
    [
        # the declared costs dwarf the model's own (tens of microseconds), so a busy machine cannot flip the verdict
        (0.0, 10.0, False, 1),  # every image costs the same batched or not: batching does not pay on this CPU
        (20.0, 1.0, False, 4),  # a fixed cost per run that batching shares: it pays
        (0.0, 10.0, True, 4),  # on a GPU: one run for every camera, without measuring
    ],
)
def test_with_batch_auto_each_model_gets_the_batch_measured_best_here(
    models: dict[str, Path], overhead_ms: float, per_image_ms: float, on_gpu: bool, chosen: int
) -> None:
    """The runtime below is the real onnxruntime session, slowed by a declared cost per run and per image, so the
    measurement's verdict is known in advance; the real figure on this CPU is in tools/bench_cameras.py."""
    import time as _time

    class Costed(OnnxRuntime):
        @property
        def on_gpu(self) -> bool:
            return on_gpu

        def run(self, x: np.ndarray) -> list[np.ndarray]:
            _time.sleep((overhead_ms + per_image_ms * len(x)) / 1000)
            return super().run(x)

    m = manifest(1)
    model = LoadedModel(m, Costed(models["dynamic"], RuntimeOptions()), Preprocessor(m.input),
                        decoder_for(m.decoder, len(m.classes)))  # fmt: skip
    cams = [FrameSource("0", name=f"cam{i}") for i in range(4)]  # never started: only their count matters
    loop = InferenceLoop(cams, batch=4, auto_batch=True)
    loop.swap(model)
    assert model.batch_choice == chosen and loop.batch_limit(model) == chosen
    single = _load(models["single"])
    loop.swap(single)
    assert loop.batch_limit(single) == 1  # a batch-1 model is never asked for more
