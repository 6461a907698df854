"""Time a version's candidate targets on this device and choose the one to serve.

The build host measured every target on its own hardware; a Jetson, a T4 and an H200 can rank the same
targets differently, so a device that can run more than one target times each on a ready input, within a
bounded budget, during the warm step, and serves the fastest that is not slower than onnx-fp32 *here*.
Accuracy is never measured on a device (it has no labels): every target the manifest carries passed the
build host's accuracy budget (a rejected target is never shipped), and its delta is quoted in the reason.

The rules, in order:
1. one candidate: nothing to choose;
2. a candidate whose timing failed or ran out of budget: serve onnx-fp32 (the reference every artifact
   is checked against) and say which measurement failed and why;
3. otherwise the fastest candidate whose p50 is not above onnx-fp32's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

REFERENCE = "onnx-fp32"
MIN_RUNS = 5  # fewer runs than this inside the budget: the measurement timed out
MAX_RUNS = 200  # enough for a stable p50 and p99; a fast model stops well inside its budget


@dataclass
class Timing:
    target: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    runs: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Choice:
    target: str
    reason: str


def time_runs(
    run: Callable[[], Any], budget_s: float, target: str, clock: Callable[[], float] = time.perf_counter
) -> Timing:
    """Time `run` (one inference on a ready input) until `budget_s` is spent or MAX_RUNS are done; one
    unmeasured run first (the first run allocates). A run that raises is reported as the error."""
    try:
        run()
        times: list[float] = []
        deadline = clock() + budget_s
        while len(times) < MAX_RUNS:
            t0 = clock()
            if t0 >= deadline:
                break
            run()
            times.append((clock() - t0) * 1000.0)
    except Exception as exc:  # noqa: BLE001 - any failure of a candidate is a reason to not serve it
        return Timing(target, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    if len(times) < MIN_RUNS:
        return Timing(target, runs=len(times), error=f"timed out: {len(times)} run(s) in the {budget_s:g} s budget")
    return Timing(
        target,
        p50_ms=round(float(np.percentile(times, 50)), 4),
        p99_ms=round(float(np.percentile(times, 99)), 4),
        runs=len(times),
    )


def choose(timings: list[Timing], deltas: dict[str, float | None], fallback: str) -> Choice:
    """The target to serve, with the sentence the server shows. `deltas`: each target's accuracy change
    against fp32 on the build host, in points; `fallback`: what to serve when nothing can be compared."""
    if not timings:
        return Choice(fallback, "nothing measured")
    if len(timings) == 1:
        return Choice(timings[0].target, "the only target this device runs")
    failed = [t for t in timings if t.error]
    ok = {t.target: t for t in timings if not t.error and t.p50_ms is not None}
    if failed:
        why = "; ".join(f"{t.target}: {t.error}" for t in failed)
        safe = REFERENCE if REFERENCE in ok else fallback
        return Choice(safe, f"measurement failed ({why}); serving {safe}")
    ref = ok.get(REFERENCE)
    fits = [t for t in ok.values() if ref is None or (t.p50_ms or math.inf) <= (ref.p50_ms or math.inf)]
    best = min(fits, key=lambda t: t.p50_ms or math.inf)
    others = ", ".join(f"{t.target} {t.p50_ms:.2f} ms" for t in ok.values() if t is not best)
    if ref is None:
        return Choice(best.target, f"fastest here: p50 {best.p50_ms:.2f} ms ({others})")
    if best is ref:
        return Choice(REFERENCE, f"fastest here: p50 {ref.p50_ms:.2f} ms ({others}: not faster than fp32 here)")
    delta = deltas.get(best.target)
    acc = f", {delta:+.2f} pts on the build host" if delta is not None else ""
    speedup = (ref.p50_ms or 0) / (best.p50_ms or 1)
    return Choice(best.target, f"{speedup:.2f}x fp32 here (p50 {best.p50_ms:.2f} vs {ref.p50_ms:.2f} ms){acc}")
