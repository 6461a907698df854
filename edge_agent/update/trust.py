"""What the agent trusts: the highest verified version per model, written atomically."""

from __future__ import annotations

import threading
from pathlib import Path

from edge_agent.fsutil import atomic_write_json, read_json


class TrustStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def trusted_version(self, model: str) -> int:
        return int(read_json(self._path, {}).get(model, 0))

    def record(self, model: str, version: int) -> None:
        """Raise the trusted version of `model` to `version` (never lowers it, except by `reset`)."""
        with self._lock:
            data = read_json(self._path, {})
            if version > int(data.get(model, 0)):
                data[model] = version
                atomic_write_json(self._path, data, mode=0o600)

    def lower_to(self, model: str, version: int) -> None:
        """Used only after a signed rollback manifest was verified and installed."""
        with self._lock:
            data = read_json(self._path, {})
            data[model] = version
            atomic_write_json(self._path, data, mode=0o600)
