"""Everything one training run is given, in one typed place (the CLI and the job worker build it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    model: str
    epochs: int = 20
    batch: int = 16
    lr: float = 2e-3
    size: int | None = None  # the architecture's default when None
    init_from: Path | None = None  # fine-tune from an edgeloop checkpoint or a plain state dict
    resume: bool = False  # continue OUT/last.pt
    seed: int = 0
    max_minutes: float | None = None  # stop after the epoch that passes this, with the schedule annealed
    device: str | None = None  # cpu | cuda | cuda:N; cuda when available
    hard_share: float = 0.0  # reviewed hard samples repeated until they are this share of an epoch
    workers: int | None = None  # loader processes; None: 0 on a CPU (measured: they only add copies), 4 on a GPU
    compile: bool = False  # torch.compile the model (worth it on a GPU for long runs; measure first)
    cache_in_memory_mb: int = 2048  # decoded images above this go to a memory-mapped file in the run folder

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1 or not (self.lr > 0):
            raise ValueError("epochs and batch must be >= 1 and lr > 0")
        if self.workers is not None and self.workers < 0:
            raise ValueError("workers must be >= 0")
