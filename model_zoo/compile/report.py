"""What a compile produced: one row per target, the recommendation per device class, and the table text
that `edgeloop models show` and the compile job print."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DEVICE_CLASSES = ("cpu", "cuda", "tensorrt")
# onnxruntime's execution provider -> the device class whose devices run it
PROVIDER_CLASS = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}


@dataclass
class TargetResult:
    target: str
    status: str  # built | rejected: … | not built: … | failed: …
    path: str | None = None
    sha256: str | None = None
    size: int | None = None
    # the batch-1 figures on the first provider measured (the CPU): what older readers of a report show
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    threads: int | None = None
    speedup: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    delta: float | None = None  # primary metric, in points (x100), candidate - fp32
    measured_on: str | None = None  # device class of the figures above
    notes: list[str] = field(default_factory=list)
    # one row per (execution provider, batch): {provider, device_class, batch, p50_ms, p99_ms, threads}
    measurements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def built(self) -> bool:
        return self.status == "built"

    def latency(self, device_class: str, batch: int = 1) -> float | None:
        """p50 at `batch` on the provider of `device_class`, if it was measured there."""
        for m in self.measurements:
            if m["device_class"] == device_class and m["batch"] == batch and m.get("p50_ms") is not None:
                return float(m["p50_ms"])
        if not self.measurements and self.measured_on == device_class and batch == 1:  # a report from before
            return self.latency_p50_ms
        return None


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
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> CompileReport:
        d = dict(d)
        d["results"] = [TargetResult(**r) for r in d["results"]]
        return CompileReport(**d)

    def result(self, target: str) -> TargetResult | None:
        return next((r for r in self.results if r.target == target), None)

    @property
    def columns(self) -> list[tuple[str, int]]:
        """(device class, batch) pairs measured for any target, in a stable order: the table's latency columns."""
        seen = {(m["device_class"], m["batch"]) for r in self.results for m in r.measurements}
        order = {dc: i for i, dc in enumerate(DEVICE_CLASSES)}
        return sorted(seen, key=lambda c: (order.get(c[0], 9), c[1]))


def table_text(report: CompileReport) -> str:
    """The target table: one p50 column per (device class, batch) measured, then accuracy and size."""
    cols = report.columns or [("cpu", 1)]
    lat_head = " ".join(f"{f'{dc} b{b} ms':>12}" for dc, b in cols)
    head = f"{'target':<15} {'status':<30} {lat_head} {'speedup':>7} {report.metric:>9} {'delta':>6} {'size':>9}"
    lines = [head, "-" * len(head)]
    for r in report.results:
        acc = r.accuracy.get(report.metric)
        lat = " ".join(f"{_f(r.latency(dc, b), 2):>12}" for dc, b in cols)
        lines.append(
            f"{r.target:<15} {r.status[:30]:<30} {lat} "
            f"{(_f(r.speedup, 2) + 'x') if r.speedup else '-':>7} {_f(acc, 4):>9} "
            f"{(f'{r.delta:+.2f}' if r.delta is not None else '-'):>6} "
            f"{(f'{r.size / 1e6:.2f} MB' if r.size else '-'):>9}"
        )
    lines.append("")
    for dc in DEVICE_CLASSES:
        lines.append(f"recommended for {dc:<8}: {report.recommended.get(dc, '-'):<10} {report.reasons.get(dc, '')}")
    if report.host.get("key"):
        lines.append(f"measured on: {report.host['key']}")
    return "\n".join(lines)


def _f(v: float | None, nd: int) -> str:
    return "-" if v is None else f"{v:.{nd}f}"
