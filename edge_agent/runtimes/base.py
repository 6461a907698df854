"""The runtime plugin interface: load a model file, run one input, warm up, close."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class RuntimeError_(Exception):
    """A model that cannot be loaded or run; str() says why."""


class RuntimeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    intra_threads: int = Field(0, ge=0, description="Threads inside one operator; 0 = one per physical core.")
    allow_spinning: bool = Field(False, description="Let idle threads spin: lower latency, more CPU.")
    providers: list[str] = Field(
        default_factory=list, description="Execution providers in order; empty = best available."
    )


class Runtime(ABC):
    name: str = "base"

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        self.model_path = model_path
        self.options = options

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    @abstractmethod
    def input_dtype(self) -> np.dtype: ...

    @abstractmethod
    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one batch; returns the model's outputs in declaration order."""

    def warmup(self, runs: int = 2) -> list[np.ndarray]:
        """A model is ready when its first inference has run: run it on a zero input."""
        x = np.zeros(self.input_shape, dtype=self.input_dtype)
        out: list[np.ndarray] = []
        for _ in range(runs):
            out = self.run(x)
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
