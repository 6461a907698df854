"""A model loaded for serving: its runtime, preprocessing and decoder, its health counters, and the batch
sizes it runs (chosen by measurement on a CPU, one warmed shape on a GPU)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edge_agent.decoders.base import Decoder, Result
from edge_agent.preprocess import Preprocessor
from edge_agent.protocol.manifest import Manifest
from edge_agent.runtimes.base import Runtime

log = logging.getLogger(__name__)


@dataclass
class ModelHealth:
    frames: int = 0
    errors: int = 0
    nan_outputs: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class LoadedModel:
    manifest: Manifest
    runtime: Runtime
    preprocess: Preprocessor
    decode: Decoder
    health: ModelHealth = field(default_factory=ModelHealth)
    target: str | None = None  # the artifact target it was loaded from (onnx-fp32, onnx-int8, ...)
    batch_choice: int | None = None  # with `batch: auto`: the batch measured best for this model here
    gpu_faults: int = 0  # GPU errors in a row; at GPU_FAULTS_BEFORE_CPU the model moves to the CPU
    fallback: str | None = None  # why it serves from the CPU, when a GPU fault moved it there

    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def max_batch(self) -> int | None:
        """Images one run takes: None = any number (dynamic batch axis), else the model's fixed batch."""
        return self.runtime.max_batch

    def infer(self, image: np.ndarray) -> Result:
        if self.runtime.max_batch not in (None, 1):  # a fixed batch of N: padded
            return self.infer_batch([image])[0]
        x, tf = self.preprocess(image)
        return self.decode(self.runtime.run(x), tf)

    def buckets(self, limit: int) -> list[int]:
        """The batch shapes this model runs, up to `limit`. On a GPU, one: every batch is padded to `limit`.
        Measured on an H200 with the CUDA provider (resnet50, 8 cameras): batches whose size changed from run
        to run took about 120 ms each against 11 ms for a steady size, while 64 cameras, always a full batch,
        were served 3.8x the batch-1 loop. On a CPU a padded row costs as much as a real one, so there the
        shapes are powers of two (at most 2x padding), each warmed once."""
        cap = self.runtime.max_batch
        if cap is not None:
            return [cap]
        if self.runtime.on_gpu:
            return [limit]
        sizes, b = {limit}, 1
        while b < limit:
            sizes.add(b)
            b *= 2
        return sorted(sizes)

    def choose_batch(self, limit: int, seconds: float = 0.3, gain: float = 1.15) -> int:
        """On a GPU, `limit` (one run for every camera). On a CPU, measured: per-image time at batch 1 against
        batch `limit`, on a ready input; batching is taken only where it is at least `gain` x faster per image
        (on two cores it rarely is: resnet18 gained 55 -> 59 images/s from batch 1 to 8)."""
        if limit <= 1 or self.runtime.max_batch is not None:
            return min(limit, self.runtime.max_batch or limit)
        if self.runtime.on_gpu:
            return limit
        per_image = {}
        for b in (1, limit):
            buf = self.preprocess.batch(b)
            buf[...] = 0
            self.runtime.run(buf)
            runs, t0 = 0, time.perf_counter()
            while runs < 3 or time.perf_counter() - t0 < seconds / 2:
                self.runtime.run(buf)
                runs += 1
            per_image[b] = (time.perf_counter() - t0) / (runs * b)
        return limit if per_image[1] >= gain * per_image[limit] else 1

    def warm(self, limit: int) -> None:
        """Run every batch shape this model will see, once, before it serves."""
        for b in self.buckets(limit):
            buf = self.preprocess.batch(b)
            buf[...] = 0
            self.runtime.run(buf)

    def infer_batch(
        self, images: list[np.ndarray], limit: int | None = None, pool: ThreadPoolExecutor | None = None
    ) -> list[Result]:
        """Many frames in one run: each is preprocessed straight into its slot of one reused batch buffer,
        padded to the next batch shape (`buckets`), the model runs once, and the outputs are split per frame.
        A batch-1 model runs them one by one. With `pool`, frames are preprocessed in parallel (resize and
        the fused kernel release the GIL)."""
        cap = self.runtime.max_batch
        if cap == 1:
            return [self.infer(im) for im in images]
        sizes = self.buckets(limit or len(images))
        step = sizes[-1]
        out: list[Result] = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            size = next(b for b in sizes if b >= len(chunk))  # padded: the rows past the chunk are ignored
            buf = self.preprocess.batch(size)
            if pool is not None and len(chunk) > 1:
                tfs = list(pool.map(self.preprocess.fill, chunk, buf))
            else:
                tfs = [self.preprocess.fill(im, buf[i]) for i, im in enumerate(chunk)]
            outputs = self.runtime.run(buf)
            out.extend(self.decode([o[i : i + 1] for o in outputs], tf) for i, tf in enumerate(tfs))
        return out
