"""Power, thermal, memory and GPU load on a Jetson, from `tegrastats` (Jetsons have no nvidia-smi).

`parse` reads one line of its output (the formats of JetPack 5 and 6 differ: rails with or without `mW`,
GPU load with or without a frequency); `TegraStats` runs it in the background and keeps the newest reading
for telemetry. Where `tegrastats` does not exist (any machine but a Jetson), nothing runs.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from typing import Any

log = logging.getLogger(__name__)
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?[\d.]+)C\b")
_RAIL = re.compile(r"\b(VDD_[A-Z0-9_]+|POM_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")


def parse(line: str) -> dict[str, Any] | None:
    """One tegrastats line -> {ram_used_mb, ram_total_mb, cpu_load_pct, gpu_load_pct, temp_c, power_mw,
    power_in_mw}; None for a line that is not tegrastats output."""
    ram, gpu = _RAM.search(line), _GPU.search(line)
    if ram is None and gpu is None:
        return None
    out: dict[str, Any] = {}
    if ram is not None:
        out["ram_used_mb"], out["ram_total_mb"] = int(ram.group(1)), int(ram.group(2))
    if gpu is not None:
        out["gpu_load_pct"] = float(gpu.group(1))
    cpu = _CPU.search(line)
    if cpu is not None:
        loads = [float(c.split("%", 1)[0]) for c in cpu.group(1).split(",") if "%" in c]  # "off" cores skipped
        if loads:
            out["cpu_load_pct"] = round(sum(loads) / len(loads), 1)
    out["temp_c"] = {name.lower(): float(v) for name, v in _TEMP.findall(line)}
    rails = {name: float(now) for name, now, _avg in _RAIL.findall(line)}
    out["power_mw"] = rails
    total = rails.get("VDD_IN", rails.get("POM_5V_IN"))
    if total is not None:
        out["power_in_mw"] = total
    return out


class TegraStats:
    """`tegrastats --interval MS` in the background; `latest` is the newest parsed reading (or None)."""

    def __init__(self, interval_ms: int = 1000) -> None:
        self.interval_ms = interval_ms
        self.latest: dict[str, Any] | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("tegrastats") is not None

    def start(self) -> TegraStats:
        exe = shutil.which("tegrastats")
        if exe is None:
            return self
        try:
            self._proc = subprocess.Popen(
                [exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError as exc:
            log.warning("tegrastats did not start: %s", exc)
            return self
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            try:
                reading = parse(line)
            except ValueError:  # a line in a format this build does not know: keep the last good reading
                continue
            if reading is not None:
                self.latest = reading

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
