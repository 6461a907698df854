"""Child processes the server manages (job workers, Mosquitto): they die with it, and a stale one left by a
server that was killed is recognised at the next start and replaced."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # loaded in the parent: no dlopen after fork
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """In the child, before exec: the kernel kills this process when the thread that started it dies, so a
    child never outlives a crashed server. Elsewhere than Linux, `stop_stale` still cleans up at the next start."""
    if _PRCTL is not None:
        _PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_stale(pid_file: Path, marker: str, timeout: float = 5.0) -> int | None:
    """If `pid_file` names a live process whose command line contains `marker` (ours, from an earlier start),
    stop it and return its pid. A pid reused by an unrelated process is left alone."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 1 or marker not in _cmdline(pid):
        return None
    log.warning("stopping stale process %d left by an earlier server (%s)", pid, marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker not in _cmdline(pid):
                return pid
            time.sleep(0.05)
    return pid
