"""Behaviour gates: `fps>=0.9x` (relative to the device's own baseline on the previous version),
`p95<=1.2x`, `agreement>=0.9` (absolute), `error_rate<=0.01`, `confidence>=0.95x` and
`detections>=0.8x` / `detections<=1.2x` (mean-confidence and detection-rate drift)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

METRICS = ("fps", "p95", "error_rate", "confidence", "detections", "agreement")
DEFAULT_GATES = ("fps>=0.9x", "p95<=1.2x")
_GATE = re.compile(r"^(?P<metric>[a-z_0-9]+)\s*(?P<op>>=|<=)\s*(?P<value>\d+(\.\d+)?)(?P<rel>x?)$")


class GateError(ValueError):
    pass


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    value: float
    relative: bool

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'x' if self.relative else ''}"

    def check(self, new: dict[str, Any], baseline: dict[str, Any] | None) -> tuple[bool, str]:
        """(passed, one-line explanation with the numbers)."""
        got = new.get(self.metric)
        if got is None:
            return False, f"{self.metric}: no value on the new version"
        limit = self.value
        if self.relative:
            base = (baseline or {}).get(self.metric)
            if base is None or base == 0:
                return True, f"{self.metric}: no baseline, not gated"
            limit = self.value * float(base)
        ok = got >= limit if self.op == ">=" else got <= limit
        return ok, f"{self.metric} {got:.4g} {'meets' if ok else 'fails'} {self.op} {limit:.4g} ({self.text})"


def parse_gate(text: str) -> Gate:
    m = _GATE.match(text.strip().replace(" ", ""))
    if not m or m["metric"] not in METRICS:
        raise GateError(f"cannot read gate {text!r}: expected METRIC>=N or METRIC<=Nx with METRIC in {METRICS}")
    if m["metric"] == "agreement" and m["rel"]:
        raise GateError("agreement is absolute (0-1): write agreement>=0.9")
    return Gate(m["metric"], m["op"], float(m["value"]), bool(m["rel"]))
