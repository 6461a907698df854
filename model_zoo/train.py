"""Training: a dataset version in, checkpoints and per-epoch metrics out.

    python -m model_zoo.train --data DIR --dataset NAME[:VERSION] --model eldet --epochs 20 --out RUN_DIR
    torchrun --nproc_per_node 2 -m model_zoo.train …      (DDP: gloo on CPU, nccl on GPU)

Images are decoded once into an array every loader worker shares; augmentation (flips with their boxes,
crops, colour jitter) runs on whole batches on the training device; on a GPU: pinned memory, channels_last,
cuDNN autotuning, bf16 autocast (fp16 with a gradient scaler where bf16 is missing). `--from` fine-tunes from
a checkpoint, `--resume` continues RUN_DIR/last.pt. Rank 0 writes `last.pt`, `best.pt` (best validation
metric) and `metrics.jsonl`; with `--progress json` it prints one JSON object per line (what the server's job
runner reads), otherwise a progress bar. The parts live in `model_zoo/training/`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.protocol.manifest import parse_ref_latest
from model_zoo.datasets.store import DatasetStore, DatasetVersion
from model_zoo.objects import JobFiles, cache_root
from model_zoo.training.config import TrainConfig
from model_zoo.training.data import letterbox
from model_zoo.training.loop import Progress, run

__all__ = ["TrainConfig", "letterbox", "train", "main"]


def train(
    dv: DatasetVersion,
    model_name: str,
    out_dir: Path,
    epochs: int = 20,
    batch: int = 16,
    lr: float = 2e-3,
    size: int | None = None,
    init_from: Path | None = None,
    resume: bool = False,
    seed: int = 0,
    max_minutes: float | None = None,
    progress: Progress | None = None,
    progress_mode: str = "bar",
    device_name: str | None = None,
    hard_share: float = 0.0,
    workers: int | None = None,
    compile: bool = False,
    on_checkpoint: Callable[[list[Path]], None] | None = None,
) -> dict[str, Any]:
    """Train; returns the summary written to out_dir/summary.json (rank 0). See TrainConfig for each setting."""
    cfg = TrainConfig(
        model=model_name, epochs=epochs, batch=batch, lr=lr, size=size, init_from=init_from, resume=resume,
        seed=seed, max_minutes=max_minutes, device=device_name, hard_share=hard_share, workers=workers,
        compile=compile,
    )  # fmt: skip
    return run(dv, cfg, Path(out_dir), progress, progress_mode, on_checkpoint)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model_zoo.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="dataset store folder")
    p.add_argument("--dataset", required=True, help="NAME[:VERSION] (latest when no version)")
    p.add_argument("--model", default="eldet", help="eldet | mobilenet_v3_small | resnet18")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=None, help="input size (square); the model's default if omitted")
    p.add_argument(
        "--from",
        dest="init_from",
        type=Path,
        default=None,
        help="fine-tune from an edgeloop checkpoint or a state dict file you give (e.g. torchvision weights)",
    )
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader processes (default: 0 on a CPU, where they only add copies; 4 on a GPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (measure first: GPU, long runs)")
    p.add_argument(
        "--hard-share",
        type=float,
        default=0.0,
        help="repeat reviewed hard samples (source sample:<id>) until they are this share of an epoch",
    )
    p.add_argument(
        "--storage-url",
        default=None,
        help="object storage (s3://BUCKET/PREFIX?endpoint=…): --data is a read-through cache of its datasets/, and "
        "with --sync-prefix each checkpoint is uploaded as it is written (and fetched from there to --resume)",
    )
    p.add_argument("--sync-prefix", default=None, help="the bucket folder of OUT, e.g. jobs/12/run")
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="with --storage-url: relative --data, --out and --from are under this local copy of the bucket "
        "(default EDGELOOP_CACHE_DIR, or ~/.cache/edgeloop)",
    )
    a = p.parse_args(argv)
    if a.epochs < 1 or a.batch < 1 or not math.isfinite(a.lr) or a.lr <= 0:
        p.error("--epochs and --batch must be >= 1 and --lr > 0")
    name, ver = parse_ref_latest(a.dataset)
    try:
        remote, on_checkpoint = None, None
        if a.storage_url:
            files = JobFiles.open(a.root or cache_root(), a.storage_url)
            a.data, a.out = files.path(a.data), files.path(a.out)
            if a.init_from is not None and not a.init_from.is_absolute():
                a.init_from = files.fetch(a.init_from, "checkpoint to fine-tune from")
            remote = files.remote
            on_checkpoint = _sync(remote, a.sync_prefix, a.out, a.resume)
        store = DatasetStore(a.data, remote)
        dv = store.load(name, ver)
        store.materialize(dv)  # on a host that lacks them: every image before the first step
        train(
            dv,
            a.model,
            a.out,
            a.epochs,
            a.batch,
            a.lr,
            a.size,
            a.init_from,
            a.resume,
            a.seed,
            a.max_minutes,
            progress_mode=a.progress,
            device_name=a.device,
            hard_share=a.hard_share,
            workers=a.workers,
            compile=a.compile,
            on_checkpoint=on_checkpoint,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    return 0


def _sync(remote: Any, prefix: str | None, out: Path, resume: bool) -> Callable[[list[Path]], None] | None:
    """The upload callback of --sync-prefix (rank 0 calls it as it writes). With --resume on a host that has no
    OUT/last.pt, it is fetched from the bucket first: a run resumes on any host."""
    if not prefix:
        return None
    prefix = prefix.strip("/")
    if resume and not (out / "last.pt").is_file():
        remote.fetch(f"{prefix}/last.pt", out / "last.pt")

    def upload(paths: list[Path]) -> None:
        for p in paths:
            if p.is_file():
                remote.put_file(f"{prefix}/{p.name}", p)

    return upload


if __name__ == "__main__":
    sys.exit(main())
