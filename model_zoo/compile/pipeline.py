"""Compile a trained checkpoint: export FP32, build every target in the table, measure each on every
provider this host has, score its accuracy through the agent's own decoder, recommend per device class.

A target the host cannot build is reported as `not built: <why>`, never silently replaced by another; one
that fails is `failed: <why>` and the others go on; one over the accuracy budget is `rejected: …` and never
shipped.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.protocol.manifest import InputSpec
from edge_agent.runtimes import RuntimeOptions, create_runtime
from edge_agent.runtimes.base import extract_trt_calibration, trt_quantization
from edge_agent.update.download import sha256_file
from model_zoo.compile.measure import host_info, measure_providers
from model_zoo.compile.quantize import CalibReader, CompileError, _method, graph_nodes
from model_zoo.compile.recommend import recommend
from model_zoo.compile.report import PROVIDER_CLASS, CompileReport, TargetResult
from model_zoo.compile.targets import DEFAULT_TARGETS, TARGETS, TRT_INT8_MODES, BuildContext
from model_zoo.datasets.store import DatasetVersion
from model_zoo.evaluate import evaluate_onnx

log = logging.getLogger(__name__)


def compile_checkpoint(
    checkpoint: Path,
    dv: DatasetVersion,
    out_dir: Path,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    calibration: str = "minmax",
    calib_count: int = 64,
    budget_points: float | None = None,
    eval_limit: int | None = None,
    latency_seconds: float = 1.5,
    progress: Callable[[dict], None] | None = None,
    trt_int8: str = "explicit",
) -> CompileReport:
    import torch
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from model_zoo.models import build, export_onnx, kind

    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise CompileError(f"unknown targets {unknown}; the table has {', '.join(TARGETS)}")
    if trt_int8 not in TRT_INT8_MODES:
        raise CompileError(f"--trt-int8 must be one of {', '.join(TRT_INT8_MODES)}, got {trt_int8!r}")
    _method(calibration)  # refused before any work
    if "onnx-fp32" not in targets:
        targets = ("onnx-fp32", *targets)  # the reference every other target is measured against
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    name, task, size, classes = ck["model"], ck["task"], int(ck["size"]), list(ck["classes"])
    if tuple(classes) != tuple(dv.classes):
        raise CompileError(f"checkpoint classes {classes} differ from {dv.ref} classes {list(dv.classes)}")
    mk = kind(name)
    metric = "mAP50_95" if task == "detect" else "top1"
    if budget_points is None:
        budget_points = 1.0 if task == "detect" else 0.5
    host = host_info()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    work.mkdir(exist_ok=True)
    spec = InputSpec(shape=(1, 3, size, size), layout="NCHW", color="RGB", resize=mk.resize, mean=mk.mean, std=mk.std)

    def step(msg: str, frac: float) -> None:
        log.info("%s", msg)
        if progress:
            progress({"event": "step", "message": msg, "progress": round(frac, 3)})

    model = build(name, len(classes), size)
    model.load_state_dict(ck["state_dict"])
    fp32 = out_dir / "onnx-fp32.onnx"
    step("exporting ONNX (dynamic batch axis)", 0.02)
    export_onnx(model, name, size, str(fp32))
    pre = work / "preprocessed.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    reader: CalibReader | None = None

    def calib() -> CalibReader:
        nonlocal reader
        if reader is None:
            reader = CalibReader(dv, spec, calib_count)
        return reader

    convs, tail = graph_nodes(pre)
    ctx = BuildContext(fp32, pre, work, calibration, trt_int8, not host["vnni"], calib, exclude=list(tail))

    def measure(res: TargetResult, path: Path) -> None:
        classes_ = set(TARGETS[res.target].device_classes) | {"cpu"}  # the CPU figure is one every host can give
        providers = [p for p in host["providers"] if PROVIDER_CLASS[p] in classes_]
        res.measurements = measure_providers(path, spec.shape, providers, latency_seconds)
        first = next((m for m in res.measurements if "p50_ms" in m), None)
        if first is not None:
            res.latency_p50_ms, res.latency_p99_ms = first["p50_ms"], first["p99_ms"]
            res.threads, res.measured_on = first["threads"], first["device_class"]
        res.accuracy = evaluate_onnx(path, dv, task, spec, limit=eval_limit)
        res.path, res.size, res.sha256 = str(path), path.stat().st_size, sha256_file(path)

    results: list[TargetResult] = []
    ref = TargetResult("onnx-fp32", "built")
    step(f"measuring onnx-fp32 on {', '.join(host['providers'])}", 0.1)
    measure(ref, fp32)
    ref.speedup, ref.delta = 1.0, 0.0
    results.append(ref)
    base = ref.accuracy[metric]

    def over(res: TargetResult) -> bool:
        res.delta = round((res.accuracy[metric] - base) * 100, 2)
        return res.delta < -budget_points

    others = [x for x in targets if x != "onnx-fp32"]
    for i, t in enumerate(others):
        frac = 0.2 + 0.75 * i / max(1, len(others))
        res = TargetResult(t, "built")
        path = out_dir / f"{t}.onnx"
        ctx.notes = res.notes
        try:
            if t == "onnx-int8" and ctx.reduce_range:
                res.notes.append("reduce_range: this CPU has no VNNI")
            if t == "onnx-int8" or (t == "tensorrt" and trt_int8 == "explicit"):
                # sensitive nodes stay float until the accuracy is within budget: output side first, then input
                for sensitive in ([], convs[-2:], convs[-4:] + convs[:1]):
                    ctx.exclude = tail + sensitive
                    res.notes[:] = [n for n in res.notes if not n.startswith("explicit quantization")]
                    step(f"{t}: calibrating ({calibration}), {len(sensitive)} layers kept float", frac)
                    TARGETS[t].build(ctx, path)  # type: ignore[misc]
                    measure(res, path)
                    if not over(res):
                        break
                if tail:
                    res.notes.append(f"decode tail kept float ({len(tail)} nodes)")
                if sensitive:
                    res.notes.append(f"sensitive layers kept float: {', '.join(sensitive)}")
            else:
                step(f"{t}: building", frac)
                TARGETS[t].build(ctx, path)  # type: ignore[misc]
                if t == "tensorrt":  # the FP32 graph and a cache: nothing new to measure or score
                    res.path, res.size, res.sha256 = str(path), path.stat().st_size, sha256_file(path)
                else:
                    measure(res, path)
                    over(res)
                if t == "onnx-fp16" and not any(m["device_class"] != "cpu" for m in res.measurements):
                    res.notes.append("measured on the CPU only, which has no fp16 math: no GPU here")
            if res.delta is not None and res.delta < -budget_points:
                res.status = f"rejected: {metric} {res.delta:+.2f} pts > budget {budget_points}"
            if res.built and res.latency_p50_ms and ref.latency_p50_ms:
                res.speedup = round(ref.latency_p50_ms / res.latency_p50_ms, 3)
            if t == "tensorrt":
                results.append(res)
                if res.built:
                    res = engine_row(path, spec.shape, work, host, latency_seconds)
                else:
                    res = TargetResult("tensorrt-engine", "not built: the tensorrt artifact was rejected")
                path = work / "engine.plan"
        except CompileError:
            raise
        except Exception as exc:  # noqa: BLE001 - one target failing must not hide the others
            log.warning("target %s failed: %s", t, exc)
            res.status = f"failed: {str(exc).splitlines()[0][:200]}"
            path.unlink(missing_ok=True)
        results.append(res)

    recommended, reasons = recommend(results, budget_points, host)
    shutil.rmtree(work, ignore_errors=True)
    report = CompileReport(
        model=name,
        task=task,
        classes=classes,
        input_size=size,
        metric=metric,
        budget_points=budget_points,
        host=host,
        dataset=dv.ref,
        results=results,
        recommended=recommended,
        reasons=reasons,
        input_spec=json.loads(spec.model_dump_json()),
    )
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    step("done", 1.0)
    return report


def engine_row(
    onnx_path: Path, shape: tuple[int, ...], work: Path, host: dict[str, Any], seconds: float
) -> TargetResult:
    """A TensorRT engine built and timed here, when this host can: a report row, not a shipped artifact
    (engines are specific to one GPU and TensorRT version, so devices build their own)."""
    res = TargetResult("tensorrt-engine", "built")
    if not host["gpu"]:
        res.status = "not built: no GPU"
        return res
    if not host["tensorrt"]:
        res.status = "not built: no TensorRT"
        return res
    # Unverified here (no GPU on the build machines this was written on): the same code path as the agent.
    explicit = trt_quantization(onnx_path) == "explicit"
    cache = None if explicit else extract_trt_calibration(onnx_path, work)
    opts = RuntimeOptions(
        precision="int8",
        int8_calibration=cache,
        int8_explicit=explicit,
        cache_dir=work / "engines",
        artifact_sha256=sha256_file(onnx_path),
    )
    rt = create_runtime("tensorrt", onnx_path, opts)
    try:
        x = np.zeros(shape, np.float32)
        rt.warmup(5)
        times: list[float] = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 20:
            t0 = time.perf_counter()
            rt.run(x)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        rt.close()
    res.latency_p50_ms = round(float(np.percentile(times, 50)), 3)
    res.latency_p99_ms = round(float(np.percentile(times, 99)), 3)
    res.measured_on = "tensorrt"
    res.measurements = [
        {"provider": "TensorRT", "device_class": "tensorrt", "batch": 1, "p50_ms": res.latency_p50_ms,
         "p99_ms": res.latency_p99_ms, "threads": 0}
    ]  # fmt: skip
    res.notes.append(f"engine + timing cache in {work / 'engines'} (not shipped)")
    return res
