"""`edgeloop-agent bench`: the real loop against the model alone and against a plain sequential loop,
measured in one run on this machine so the ratios mean something on a shared, noisy host."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.camera.loop import InferenceLoop, LoadedModel
from edge_agent.camera.sources import FrameSource
from edge_agent.decoders.base import decoder_for
from edge_agent.preprocess import Preprocessor
from edge_agent.protocol.manifest import ArtifactEntry, DecoderSpec, InputSpec, Manifest
from edge_agent.runtimes import RuntimeOptions, create_runtime
from edge_agent.runtimes.onnxruntime_rt import physical_cores


@dataclass
class BenchModel:
    path: Path
    manifest: Manifest

    def load(self, options: RuntimeOptions, kernel: str = "auto") -> LoadedModel:
        rt = create_runtime("onnxruntime", self.path, options)
        rt.warmup()
        m = self.manifest
        return LoadedModel(m, rt, Preprocessor(m.input, kernel), decoder_for(m.decoder, len(m.classes)))


def describe_model(path: Path, classes: list[str] | None = None, resize: str = "stretch") -> BenchModel:
    """A manifest for a bare ONNX file: classifier if the output is (1, C), YOLOv8-style if (1, 4+C, N)."""
    rt = create_runtime("onnxruntime", path, RuntimeOptions(intra_threads=1))
    out = rt.warmup(1)[0]
    shape = tuple(rt.input_shape)
    if out.ndim == 2:
        n, dec = out.shape[1], DecoderSpec(type="classify")
        task = "classify"
    elif out.ndim == 3:
        n, dec = out.shape[1] - 4, DecoderSpec(type="yolov8")
        task = "detect"
    else:
        raise ValueError(f"output shape {out.shape} is neither (1, C) nor (1, 4+C, N)")
    names = tuple(classes) if classes else tuple(f"class{i}" for i in range(n))
    if len(names) != n:
        raise ValueError(f"the model has {n} classes, --classes gives {len(names)}")
    now = datetime.now(timezone.utc)
    size = path.stat().st_size
    manifest = Manifest(
        model="bench",
        version=1,
        task=task,
        classes=names,
        input=InputSpec(shape=shape, resize=resize, layout="NCHW" if shape[1] == 3 else "NHWC"),
        decoder=dec,
        artifacts={"onnx-fp32": ArtifactEntry(url=str(path), sha256="0" * 64, length=size)},
        created_at=now,
        expires_at=now + timedelta(days=1),
    )
    return BenchModel(path, manifest)


def raw_fps(bm: BenchModel, seconds: float) -> tuple[float, dict[str, float], RuntimeOptions]:
    """The model alone on a ready input, for each thread setting; returns the best."""
    cores = physical_cores()
    table: dict[str, float] = {}
    best: tuple[float, RuntimeOptions] = (0.0, RuntimeOptions(intra_threads=cores))
    for threads in sorted({1, cores}):
        for spin in (False, True):
            opts = RuntimeOptions(intra_threads=threads, allow_spinning=spin)
            rt = create_runtime("onnxruntime", bm.path, opts)
            x = np.zeros(rt.input_shape, rt.input_dtype)
            rt.warmup(3)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                rt.run(x)
                n += 1
            fps = n / (time.perf_counter() - t0)
            table[f"threads={threads},spin={int(spin)}"] = round(fps, 1)
            if fps > best[0]:
                best = (fps, opts)
            rt.close()
    return best[0], table, best[1]


def naive_fps(bm: BenchModel, source: str, seconds: float, options: RuntimeOptions) -> float:
    """read -> preprocess -> infer -> decode, one after the other, as most scripts do."""
    model = bm.load(options, kernel="numpy")
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    n, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            ok, frame = cap.read()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = cap.read()
                if not ok:
                    raise RuntimeError(f"cannot read frames from {source}")
            model.infer(frame)
            n += 1
    finally:
        cap.release()
    return n / (time.perf_counter() - t0)


def loop_run(
    bm: BenchModel,
    source: str,
    seconds: float,
    options: RuntimeOptions,
    pace: bool = False,
    pace_fps: float | None = None,
) -> dict[str, Any]:
    src = FrameSource(source, loop_file=True, pace_file=pace, pace_fps=pace_fps).start()
    loop = InferenceLoop([src])
    loop.swap(bm.load(options))
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while loop.stats.frames == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        f0, c0, d0, t0 = loop.stats.frames, src.captured, src.dropped, time.perf_counter()
        time.sleep(seconds)
        frames, captured, dropped = loop.stats.frames - f0, src.captured - c0, src.dropped - d0
        elapsed = time.perf_counter() - t0
        snap = loop.stats.snapshot()
        model = loop.model
        kernel = model.preprocess.kernel if model else "?"
    finally:
        loop.stop()
        src.stop()
    return {
        "fps": frames / elapsed,
        "decode_fps": captured / elapsed,
        "dropped": dropped,
        "staleness_ms_p50": snap["staleness_ms_p50"],
        "staleness_ms_p99": snap["staleness_ms_p99"],
        "latency_ms_p50": snap["latency_ms_p50"],
        "preprocess_kernel": kernel,
    }


def run(
    model: Path,
    source: str,
    seconds: float = 5.0,
    classes: list[str] | None = None,
    options: RuntimeOptions | None = None,
    sweep: bool = False,
) -> dict[str, Any]:
    bm = describe_model(model, classes)
    raw, table, best_opts = raw_fps(bm, min(2.0, seconds))
    loop_opts = options or RuntimeOptions()
    loop_table: dict[str, float] = {}
    if sweep:  # the loop's own best setting differs from the model's alone: decode shares the cores
        best_fps = 0.0
        for threads in sorted({1, physical_cores()}):
            for spin in (False, True):
                opts = RuntimeOptions(intra_threads=threads, allow_spinning=spin)
                fps = loop_run(bm, source, max(2.0, seconds / 2), opts)["fps"]
                loop_table[f"threads={threads},spin={int(spin)}"] = round(fps, 1)
                if fps > best_fps:
                    best_fps, loop_opts = fps, opts
    loop = loop_run(bm, source, seconds, loop_opts)
    naive = naive_fps(bm, source, seconds, loop_opts)
    return {
        "model": str(model),
        "source": source,
        "seconds": seconds,
        "cores": physical_cores(),
        "raw_fps": round(raw, 1),
        "raw_best_setting": {"intra_threads": best_opts.intra_threads, "allow_spinning": best_opts.allow_spinning},
        "raw_fps_by_setting": table,
        "loop_fps": round(loop["fps"], 1),
        "loop_setting": {"intra_threads": loop_opts.intra_threads, "allow_spinning": loop_opts.allow_spinning},
        "loop_fps_by_setting": loop_table,
        "naive_fps": round(naive, 1),
        "loop_over_raw": round(loop["fps"] / raw, 3) if raw else None,
        "loop_over_naive": round(loop["fps"] / naive, 3) if naive else None,
        "staleness_ms_p50": loop["staleness_ms_p50"],
        "staleness_ms_p99": loop["staleness_ms_p99"],
        "dropped": loop["dropped"],
        "decode_fps": round(loop["decode_fps"], 1),
        "preprocess_kernel": loop["preprocess_kernel"],
        "pid": os.getpid(),
    }


def raw_batch_fps(bm: BenchModel, sizes: tuple[int, ...], seconds: float, options: RuntimeOptions) -> dict[int, float]:
    """Images per second of the model alone at each batch size it can take (a ready input, no decode)."""
    rt = create_runtime("onnxruntime", bm.path, options)
    rt.warmup(3)
    out: dict[int, float] = {}
    for b in sizes:
        if rt.max_batch is not None and b != rt.max_batch and b != 1:
            continue  # a fixed-batch model runs only its own size
        x = np.zeros((b, *rt.input_shape[1:]), rt.input_dtype)
        rt.run(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            rt.run(x)
            n += b
        out[b] = round(n / (time.perf_counter() - t0), 1)
    rt.close()
    return out


def cameras_run(
    bm: BenchModel,
    source: str,
    cameras: int,
    seconds: float,
    options: RuntimeOptions,
    batch: int,
    fps: float,
    decode: str = "cpu",
    gpu: bool = False,
) -> dict[str, Any]:
    """`cameras` copies of `source`, each its own camera paced at `fps`, through one loop with `batch`:
    frames offered and served, dropped (overwritten before inference took them), staleness, batch sizes,
    and where the frames were decoded (`decode`/`gpu` as a camera's config and the box's GPU say)."""
    srcs = [
        FrameSource(
            source, loop_file=True, pace_file=True, pace_fps=fps, name=f"cam{i}", decode=decode, gpu=gpu
        ).start()
        for i in range(cameras)
    ]
    loop = InferenceLoop(srcs, batch=batch)
    loop.swap(bm.load(options))
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while loop.stats.frames < cameras and time.monotonic() < deadline:
            time.sleep(0.01)
        f0, c0, d0 = loop.stats.frames, sum(s.captured for s in srcs), sum(s.dropped for s in srcs)
        loop.batch_sizes.clear()
        t0 = time.perf_counter()
        time.sleep(seconds)
        served = loop.stats.frames - f0
        offered = sum(s.captured for s in srcs) - c0
        dropped = sum(s.dropped for s in srcs) - d0
        elapsed = time.perf_counter() - t0
        snap = loop.stats.snapshot()
        per_camera = [loop.source_stats[s.name].fps() for s in srcs]
        hist = dict(sorted(loop.batch_sizes.items()))
    finally:
        loop.stop()
        for s in srcs:
            s.stop()
    return {
        "cameras": cameras,
        "batch": batch,
        "offered_fps": round(offered / elapsed, 1),
        "served_fps": round(served / elapsed, 1),
        "dropped": dropped,
        "served_share": round(served / offered, 3) if offered else None,
        "staleness_ms_p99": snap["staleness_ms_p99"],
        "latency_ms_p50": snap["latency_ms_p50"],
        "slowest_camera_fps": round(min(per_camera), 1) if per_camera else 0.0,
        "batch_histogram": hist,
        "decoders": dict(Counter(s.decoder for s in srcs)),
        "decoder_note": next((s.decoder_note for s in srcs if s.decoder_note), None),
    }


def run_cameras(
    model: Path,
    source: str,
    cameras: int,
    batch: int,
    seconds: float = 5.0,
    fps: float = 30.0,
    options: RuntimeOptions | None = None,
) -> dict[str, Any]:
    """The batch-1 loop and the batched loop side by side on the same cameras, in one run."""
    bm = describe_model(model)
    opts = options or RuntimeOptions()
    one = cameras_run(bm, source, cameras, seconds, opts, 1, fps)
    many = cameras_run(bm, source, cameras, seconds, opts, batch, fps)
    return {
        "model": str(model),
        "source": source,
        "cores": physical_cores(),
        "batch_1": one,
        f"batch_{batch}": many,
        "served_ratio": round(many["served_fps"] / one["served_fps"], 3) if one["served_fps"] else None,
    }
