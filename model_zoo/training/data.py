"""Training data: every image decoded and fitted once, into one uint8 array that all loader workers share
(shared memory, or a memory-mapped file in the run folder when the dataset is large), then batches gathered
by index, pinned, and copied to the device without blocking. Augmentation happens there, on whole batches
(augment.py), not one image at a time in the loader.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from model_zoo.datasets.store import DatasetVersion, Sample

LETTERBOX_FILL = 114


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    h, w = img.shape[:2]
    r = min(size / w, size / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    px, py = (size - nw) // 2, (size - nh) // 2
    out = np.full((size, size, 3), LETTERBOX_FILL, np.uint8)
    out[py : py + nh, px : px + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, r, px, py


class _DecodeOne(torch.utils.data.Dataset):
    """One sample decoded and fitted: letterboxed (detect, boxes moved with it) or resized (classify)."""

    def __init__(self, dv: DatasetVersion, samples: list[Sample], size: int, task: str) -> None:
        self.dv, self.samples, self.size, self.task = dv, samples, size, task

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        s = self.samples[i]
        img = cv2.cvtColor(self.dv.load_image(s), cv2.COLOR_BGR2RGB)
        if self.task == "detect":
            img, r, px, py = letterbox(img, self.size)
            b = np.asarray(s.boxes, np.float32).reshape(-1, 4) * r + np.array([px, py, px, py], np.float32)
        else:
            img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
            b = np.zeros((0, 4), np.float32)
        return i, np.ascontiguousarray(img.transpose(2, 0, 1)), b


@dataclass
class Decoded:
    """A split decoded once: images (N, 3, S, S) uint8, shared by every loader worker; boxes and labels."""

    samples: list[Sample]
    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    size: int

    def __len__(self) -> int:
        return len(self.samples)


def decode(
    dv: DatasetVersion, samples: list[Sample], size: int, task: str, workers: int, spill: Path | None, limit_mb: int
) -> Decoded:
    """Decode every sample once, `workers` processes at a time, into one array: in shared memory, or in a
    memory-mapped file at `spill` when it is larger than `limit_mb` (the page cache then holds what fits)."""
    n = len(samples)
    nbytes = n * 3 * size * size
    if spill is not None and nbytes > limit_mb * 1024 * 1024:
        spill.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(spill, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        images = torch.from_numpy(mm)
    else:
        images = torch.empty((n, 3, size, size), dtype=torch.uint8).share_memory_()
    boxes: list[torch.Tensor] = [torch.zeros((0, 4))] * n
    loader = torch.utils.data.DataLoader(
        _DecodeOne(dv, samples, size, task), batch_size=None, num_workers=workers, collate_fn=lambda x: x
    )
    for i, img, b in loader:
        images[i] = torch.from_numpy(img)
        boxes[i] = torch.from_numpy(b)
    labels = [torch.as_tensor(s.labels, dtype=torch.int64) for s in samples]
    return Decoded(samples, images, boxes, labels, size)


class _Batches(torch.utils.data.Dataset):
    """A batch of indices in, the batch out: one gather from the shared array (no per-image work)."""

    def __init__(self, data: Decoded) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        t = torch.as_tensor(idx)
        return self.data.images[t], [self.data.boxes[i] for i in idx], [self.data.labels[i] for i in idx]


def _seed_worker(worker_id: int) -> None:
    """Each worker its own stream, derived from the run's seed (torch seeds it; numpy and random follow)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def batches(
    data: Decoded, batch: int, workers: int, pin: bool, seed: int, sampler: torch.utils.data.Sampler | None = None
) -> torch.utils.data.DataLoader:
    """Batches of `batch` images per step (the last partial one dropped), shuffled each epoch; `workers`
    persistent processes gather and pin them ahead of the step that needs them."""
    g = torch.Generator()
    g.manual_seed(seed)
    base = sampler if sampler is not None else torch.utils.data.RandomSampler(data.samples, generator=g)
    return torch.utils.data.DataLoader(
        _Batches(data),
        sampler=torch.utils.data.BatchSampler(base, batch, drop_last=True),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin,
        worker_init_fn=_seed_worker,
        generator=g,
        prefetch_factor=4 if workers > 0 else None,
    )
