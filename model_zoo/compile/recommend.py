"""The recommendation per device class, from the measured rows.

For each class: the fastest target, at batch 1 on that class's provider, that is (a) measured there,
(b) within the accuracy budget and (c) not slower than FP32 there. A class this host could not measure
gets FP32 and says so; devices of that class then choose by their own measurement at install time
(edge_agent/update/measure.py). Each reason names the host that measured it.
"""

from __future__ import annotations

from typing import Any

from model_zoo.compile.report import DEVICE_CLASSES, TargetResult
from model_zoo.compile.targets import TARGETS


def recommend(
    results: list[TargetResult], budget_points: float, host: dict[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    ref = next(r for r in results if r.target == "onnx-fp32")
    where = f" (measured on {host['key']})" if host.get("key") else ""
    recommended, reasons = {}, {}
    engine = next((r for r in results if r.target == "tensorrt-engine" and r.built), None)
    shipped = next((r for r in results if r.target == "tensorrt" and r.built), None)
    int8 = next((r for r in results if r.target == "onnx-int8"), None)
    if engine and shipped and engine.latency_p50_ms is not None:
        # the engine's accuracy follows the int8 quantization; the onnx-int8 delta is its estimate
        if int8 is not None and int8.delta is not None and int8.delta < -budget_points:
            recommended["tensorrt"], reasons["tensorrt"] = "onnx-fp32", "int8 calibration is over the accuracy budget"
        else:
            recommended["tensorrt"] = "tensorrt"
            reasons["tensorrt"] = f"engine built here: p50 {engine.latency_p50_ms} ms{where}"
    for dc in DEVICE_CLASSES:
        if dc in recommended:
            continue
        ref_ms = ref.latency(dc)
        measured = [
            r
            for r in results
            if r.built and r.target in TARGETS and dc in TARGETS[r.target].device_classes and r.latency(dc) is not None
        ]
        if not measured or ref_ms is None:
            recommended[dc] = "onnx-fp32"
            reasons[dc] = (
                f"nothing measured on a {dc} device here; fp32 is the safe choice, and devices time the targets "
                "they can run when they install it"
            )
            continue
        fits = [
            r for r in measured if (r.delta is None or r.delta >= -budget_points) and (r.latency(dc) or 0.0) <= ref_ms
        ]
        if not fits:
            recommended[dc] = "onnx-fp32"
            reasons[dc] = f"no target beats fp32 within the accuracy budget{where}"
            continue
        best = min(fits, key=lambda r: r.latency(dc) or float("inf"))
        recommended[dc] = best.target
        if best.target == "onnx-fp32":
            slower = [r.target for r in measured if r.target != "onnx-fp32"]
            reasons[dc] = (
                f"fastest within budget ({', '.join(slower)} slower or over budget)" if slower else ""
            ) + where
        else:
            speedup = ref_ms / (best.latency(dc) or ref_ms)
            reasons[dc] = f"{speedup:.2f}x fp32 on {dc}, {best.delta or 0.0:+.2f} pts{where}"
    return recommended, reasons
