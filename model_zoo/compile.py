"""Compile a trained checkpoint into every artifact target, measure each, and recommend per device class.

One table of targets (like Ultralytics' `export_formats()`): what each target is, which device classes
run it, and how it is built. For each target the build host measures latency (p50/p99 at batch 1, with the
fastest thread setting), accuracy through the agent's own decoder, the delta against FP32, and the size.
The recommendation per device class takes the fastest target that is (a) measured on that class, (b) within
the accuracy budget, and (c) not slower than FP32 there. A target the host cannot build is reported as
`not built: <why>`, never silently replaced by another.

TensorRT: the artifact is the FP32 ONNX graph with an INT8 calibration cache (TensorRT's text format)
stored in its metadata (`edgeloop.trt_int8_calibration`), so one signed file carries both; the device
builds its engine from it. When `tensorrt` and a GPU are present here, a build check runs too.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.hardware import cpu_flags
from edge_agent.preprocess import Preprocessor
from edge_agent.protocol.manifest import InputSpec
from edge_agent.runtimes import RuntimeOptions, create_runtime
from edge_agent.runtimes.base import TRT_CALIB_KEY, extract_trt_calibration
from edge_agent.update.download import sha256_file
from model_zoo.datasets.store import DatasetVersion
from model_zoo.evaluate import evaluate_onnx

log = logging.getLogger(__name__)

DEVICE_CLASSES = ("cpu", "cuda", "tensorrt")


class CompileError(ValueError):
    """The compile cannot proceed; str() says what to give or fix."""


@dataclass(frozen=True)
class TargetInfo:
    name: str
    description: str
    device_classes: tuple[str, ...]
    precision: str


TARGETS: dict[str, TargetInfo] = {
    "onnx-fp32": TargetInfo("onnx-fp32", "ONNX, float32: the reference", ("cpu", "cuda", "tensorrt"), "fp32"),
    "onnx-int8": TargetInfo(
        "onnx-int8", "ONNX QDQ int8, per-channel weights, calibrated on the dataset", ("cpu",), "int8"
    ),
    "onnx-fp16": TargetInfo("onnx-fp16", "ONNX float16 weights and math, float32 I/O", ("cuda", "tensorrt"), "fp16"),
    "tensorrt": TargetInfo(
        "tensorrt", "ONNX + INT8 calibration cache; the engine is built on the device", ("tensorrt",), "int8"
    ),
}
DEFAULT_TARGETS = ("onnx-fp32", "onnx-int8", "onnx-fp16", "tensorrt")


@dataclass
class TargetResult:
    target: str
    status: str  # built | rejected: … | not built: … | failed: …
    path: str | None = None
    sha256: str | None = None
    size: int | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    threads: int | None = None
    speedup: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    delta: float | None = None  # primary metric, in points (x100), candidate - fp32
    measured_on: str | None = None  # device class the latency was measured on
    notes: list[str] = field(default_factory=list)

    @property
    def built(self) -> bool:
        return self.status == "built"


@dataclass
class CompileReport:
    model: str
    task: str
    classes: list[str]
    input_size: int
    metric: str
    budget_points: float
    host: dict[str, Any]
    dataset: str
    results: list[TargetResult]
    recommended: dict[str, str]
    reasons: dict[str, str]
    input_spec: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> CompileReport:
        d = dict(d)
        d["results"] = [TargetResult(**r) for r in d["results"]]
        return CompileReport(**d)

    def result(self, target: str) -> TargetResult | None:
        return next((r for r in self.results if r.target == target), None)


def host_info() -> dict[str, Any]:

    flags = cpu_flags()
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - torch is optional here
        gpu = None
    trt = None
    try:
        import tensorrt

        trt = str(tensorrt.__version__)
    except Exception:  # noqa: BLE001
        trt = None
    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "avx2": "avx2" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & set(flags)),
        "gpu": gpu,
        "tensorrt": trt,
    }


def table_text(report: CompileReport) -> str:
    """The target table, as `edgeloop models show` and the compile job print it."""
    head = (
        f"{'target':<15} {'status':<30} {'p50 ms':>7} {'p99 ms':>7} {'speedup':>7} "
        f"{report.metric:>9} {'delta':>6} {'size':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in report.results:
        acc = r.accuracy.get(report.metric)
        lines.append(
            f"{r.target:<15} {r.status[:30]:<30} "
            f"{_f(r.latency_p50_ms, 2):>7} {_f(r.latency_p99_ms, 2):>7} "
            f"{(_f(r.speedup, 2) + 'x') if r.speedup else '-':>7} {_f(acc, 4):>9} "
            f"{(f'{r.delta:+.2f}' if r.delta is not None else '-'):>6} "
            f"{(f'{r.size / 1e6:.2f} MB' if r.size else '-'):>9}"
        )
    lines.append("")
    for dc in DEVICE_CLASSES:
        lines.append(f"recommended for {dc:<8}: {report.recommended.get(dc, '-'):<10} {report.reasons.get(dc, '')}")
    return "\n".join(lines)


def _f(v: float | None, nd: int) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def measure_latency(path: Path, shape: tuple[int, ...], dtype: str = "float32", seconds: float = 1.5) -> dict:
    """p50/p99 at batch 1 with the faster of 1 thread and all cores (what the agent can choose)."""
    import onnxruntime as ort

    cores = max(1, os.cpu_count() or 1)
    x = np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)
    best: dict | None = None
    for threads in sorted({1, cores}):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(5):
            sess.run(None, {name: x})
        times: list[float] = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 20:
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            times.append((time.perf_counter() - t0) * 1000)
        res = {
            "p50": float(np.percentile(times, 50)),
            "p99": float(np.percentile(times, 99)),
            "threads": threads,
            "runs": len(times),
        }
        if best is None or res["p50"] < best["p50"]:
            best = res
    assert best is not None
    return best


class _CalibReader:
    """Feeds quantize_static the agent's own preprocessing of dataset images (train split, never val)."""

    def __init__(self, dv: DatasetVersion, input_spec, count: int, seed: int = 0) -> None:

        pool = dv.split("train") or []
        if not pool:
            raise CompileError(
                "onnx-int8 needs calibration images: give a dataset version with training samples "
                "(edgeloop compile … --dataset NAME[:VERSION]; its train split is sampled) or leave onnx-int8 "
                "out of --targets"
            )
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
        pre = Preprocessor(input_spec, kernel="numpy")
        self.batches = [pre(dv.load_image(pool[int(i)]))[0].copy() for i in pick]
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {"images": x}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def _graph_nodes(path: Path) -> tuple[list[str], list[str]]:
    """(compute nodes in order, the decode tail after the last one).

    The tail (sigmoid, box arithmetic, the concat of boxes with scores) is cheap and must stay float: one
    8-bit scale cannot hold pixel coordinates and 0-1 scores at once.
    """
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    compute = [i for i, n in enumerate(nodes) if n.op_type in ("Conv", "Gemm", "MatMul")]
    last = compute[-1] if compute else -1
    return [nodes[i].name for i in compute], [n.name for n in nodes[last + 1 :]]


def build_int8(
    pre_path: Path,
    out: Path,
    reader: _CalibReader,
    method: str,
    reduce_range: bool,
    exclude: list[str],
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}
    methods["percentile"] = CalibrationMethod.Percentile
    if method.lower() not in methods:
        raise CompileError(f"calibration method must be one of {', '.join(methods)}, got {method!r}")
    reader.rewind()
    quantize_static(
        str(pre_path),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude or None,
        calibrate_method=methods[method.lower()],
        extra_options={"CalibMovingAverage": True} if method.lower() == "minmax" else {},
    )


def build_fp16(src: Path, out: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))


def trt_calibration_cache(pre_path: Path, reader: _CalibReader, work: Path) -> str:
    """TensorRT's calibration cache text: one scale (max |x| / 127, big-endian float32 hex) per tensor."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    reader.rewind()
    calib = create_calibrator(
        str(pre_path),
        None,
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
    )
    calib.collect_data(reader)
    data = calib.compute_data()
    lines = ["TRT-8600-EntropyCalibration2"]
    for name, rng in sorted(data.data.items()):
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in rng.range_value)
        scale = max(abs(lo), abs(hi)) / 127.0 or 1e-8
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def build_tensorrt(fp32: Path, out: Path, cache_text: str) -> None:
    import onnx

    model = onnx.load(str(fp32))
    entry = model.metadata_props.add()
    entry.key, entry.value = TRT_CALIB_KEY, cache_text
    onnx.save(model, str(out))


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

    cache = extract_trt_calibration(onnx_path, work)
    opts = RuntimeOptions(
        precision="int8", int8_calibration=cache, cache_dir=work / "engines", artifact_sha256=sha256_file(onnx_path)
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
    res.notes.append(f"engine + timing cache in {work / 'engines'} (not shipped)")
    return res


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
) -> CompileReport:
    import torch

    from model_zoo.models import build, export_onnx, kind

    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise CompileError(f"unknown targets {unknown}; the table has {', '.join(TARGETS)}")
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
    spec = InputSpec(
        shape=(1, 3, size, size),
        layout="NCHW",
        color="RGB",
        resize=mk.resize,
        mean=mk.mean,
        std=mk.std,
    )

    def step(msg: str, frac: float) -> None:
        log.info("%s", msg)
        if progress:
            progress({"event": "step", "message": msg, "progress": round(frac, 3)})

    model = build(name, len(classes), size)
    model.load_state_dict(ck["state_dict"])
    fp32 = out_dir / "onnx-fp32.onnx"
    step("exporting ONNX (static shape, batch 1)", 0.02)
    export_onnx(model, name, size, str(fp32))
    pre = work / "preprocessed.onnx"
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

    def measure(res: TargetResult, path: Path) -> None:
        lat = measure_latency(path, spec.shape, seconds=latency_seconds)
        res.latency_p50_ms, res.latency_p99_ms = round(lat["p50"], 3), round(lat["p99"], 3)
        res.threads, res.measured_on = lat["threads"], "cpu"
        res.accuracy = evaluate_onnx(path, dv, task, spec, limit=eval_limit)
        res.path, res.size, res.sha256 = str(path), path.stat().st_size, sha256_file(path)

    results: list[TargetResult] = []
    ref = TargetResult("onnx-fp32", "built")
    step("measuring onnx-fp32", 0.1)
    measure(ref, fp32)
    ref.speedup, ref.delta = 1.0, 0.0
    results.append(ref)
    base = ref.accuracy[metric]
    reader: _CalibReader | None = None

    def calib() -> _CalibReader:
        nonlocal reader
        if reader is None:
            reader = _CalibReader(dv, spec, calib_count)
        return reader

    for i, t in enumerate(x for x in targets if x != "onnx-fp32"):
        frac = 0.2 + 0.75 * i / max(1, len(targets) - 1)
        res = TargetResult(t, "built")
        path = out_dir / f"{t}.onnx"
        try:
            if t == "onnx-int8":
                reduce_range = not host["vnni"]
                if reduce_range:
                    res.notes.append("reduce_range: this CPU has no VNNI")
                convs, tail = _graph_nodes(pre)
                # sensitive nodes stay float until the accuracy is within budget: output side first, then input
                attempts = [[], convs[-2:], convs[-4:] + convs[:1]]
                for sensitive in attempts:
                    step(f"onnx-int8: calibrating ({calibration}), {len(sensitive)} layers kept float", frac)
                    build_int8(pre, path, calib(), calibration, reduce_range, tail + sensitive)
                    measure(res, path)
                    res.delta = round((res.accuracy[metric] - base) * 100, 2)
                    if res.delta >= -budget_points:
                        break
                if tail:
                    res.notes.append(f"decode tail kept float ({len(tail)} nodes)")
                if sensitive:
                    res.notes.append(f"sensitive layers kept float: {', '.join(sensitive)}")
                if res.delta is not None and res.delta < -budget_points:
                    res.status = f"rejected: {metric} {res.delta:+.2f} pts > budget {budget_points}"
            elif t == "onnx-fp16":
                step("onnx-fp16: converting", frac)
                build_fp16(fp32, path)
                measure(res, path)
                res.notes.append("latency measured on CPU, which has no fp16 math; cuda/tensorrt classes unmeasured")
            elif t == "tensorrt":
                step("tensorrt: computing the INT8 calibration cache", frac)
                build_tensorrt(fp32, path, trt_calibration_cache(pre, calib(), work))
                res.path, res.size, res.sha256 = str(path), path.stat().st_size, sha256_file(path)
                res.notes.append("the device builds its engine from this ONNX and the cache it carries")
                results.append(res)
                res = engine_row(path, spec.shape, work, host, latency_seconds)
                path = work / "engine.plan"
            if res.status == "built" and res.latency_p50_ms and ref.latency_p50_ms:
                res.speedup = round(ref.latency_p50_ms / res.latency_p50_ms, 3)
            if res.accuracy and res.delta is None:
                res.delta = round((res.accuracy[metric] - base) * 100, 2)
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


def recommend(
    results: list[TargetResult], budget_points: float, host: dict[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    """Per device class: the fastest measured target within budget and not slower than FP32 there."""
    ref = next(r for r in results if r.target == "onnx-fp32")
    recommended, reasons = {}, {}
    engine = next((r for r in results if r.target == "tensorrt-engine" and r.built), None)
    shipped = next((r for r in results if r.target == "tensorrt" and r.built), None)
    int8 = next((r for r in results if r.target == "onnx-int8"), None)
    if engine and shipped and engine.latency_p50_ms is not None:
        # the engine's accuracy follows the int8 calibration; use the onnx-int8 delta as its estimate
        if int8 is not None and int8.delta is not None and int8.delta < -budget_points:
            recommended["tensorrt"], reasons["tensorrt"] = "onnx-fp32", "int8 calibration is over the accuracy budget"
        else:
            recommended["tensorrt"] = "tensorrt"
            reasons["tensorrt"] = f"engine built here: p50 {engine.latency_p50_ms} ms"
    for dc in DEVICE_CLASSES:
        if dc in recommended:
            continue
        fits = [
            r
            for r in results
            if r.built
            and r.target in TARGETS
            and dc in TARGETS[r.target].device_classes
            and r.measured_on == dc
            and r.latency_p50_ms is not None
            and (r.delta is None or r.delta >= -budget_points)
            and r.latency_p50_ms <= (ref.latency_p50_ms or float("inf"))
        ]
        if dc != "cpu" and not any(r.measured_on == dc for r in results):
            recommended[dc] = "onnx-fp32"
            reasons[dc] = f"nothing measured on a {dc} device here; fp32 is the safe choice"
            continue
        if not fits:
            recommended[dc] = "onnx-fp32"
            reasons[dc] = "no target beats fp32 within the accuracy budget"
            continue
        best = min(fits, key=lambda r: r.latency_p50_ms or float("inf"))
        recommended[dc] = best.target
        if best.target == "onnx-fp32":
            slower = [
                r.target
                for r in results
                if r.measured_on == dc and r.target in TARGETS and r.target != "onnx-fp32"
                if dc in TARGETS[r.target].device_classes
            ]
            reasons[dc] = f"fastest within budget ({', '.join(slower)} slower or over budget)" if slower else ""
        else:
            reasons[dc] = f"{best.speedup}x fp32, {best.delta:+.2f} pts"
    del host
    return recommended, reasons
