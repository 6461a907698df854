"""The training loop: a dataset version and a TrainConfig in; checkpoints, per-epoch metrics and a summary out.

On a GPU the device is kept fed: images decoded once (data.py), batches gathered and pinned by persistent
workers and copied without blocking, augmentation on the GPU (augment.py), channels_last, cuDNN's autotuner,
bf16 autocast where the GPU has it (fp16 with a gradient scaler otherwise), and torch.compile on request.
DDP (torchrun): gloo on CPU, nccl on GPU; rank 0 validates, writes and reports.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.datasets.store import DatasetVersion, Sample
from model_zoo.evaluate import coco_map, top1
from model_zoo.models import build, kind
from model_zoo.training.augment import augment, normalise
from model_zoo.training.config import TrainConfig
from model_zoo.training.data import Decoded, batches, decode
from model_zoo.training.loss import detection_loss, predict_detections

Progress = Callable[[dict[str, Any]], None]


class _Sized(torch.utils.data.Dataset):
    """What DistributedSampler needs of a dataset: its length (batches are gathered by index elsewhere)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def validate(model: nn.Module, data: Decoded, task: str, mk: Any, device: torch.device, n_classes: int) -> dict:
    model.eval()
    preds: list = []
    with torch.no_grad():
        for start in range(0, len(data), 32):
            x = data.images[start : start + 32].to(device, non_blocking=True).float()
            x = normalise(x, mk.mean, mk.std)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if task == "detect":
                preds += predict_detections(model, x)  # type: ignore[arg-type]
            else:
                preds += model(x).argmax(1).tolist()
    model.train()
    # validation images are letterboxed: score against the letterboxed boxes
    samples = [
        Sample(s.sha256, s.ext, data.size, data.size, tuple(map(tuple, data.boxes[i].tolist())), s.labels, s.split)
        for i, s in enumerate(data.samples)
    ]
    return coco_map(samples, preds, n_classes) if task == "detect" else top1(samples, preds)


def _step_event(
    epoch: int, epochs: int, step: int, steps: int, done: int, elapsed: float, loss: float, history: list, metric: str
) -> dict:
    """Progress inside an epoch: the step, an ETA from this run's pace (validation not counted), the last metric."""
    left = (epochs - epoch) * steps - step
    eta = elapsed / max(1, done) * max(0, left)
    last = f" · {metric} {history[-1][metric]:.3f}" if history and metric in history[-1] else ""
    return {
        "event": "progress",  # a tick: it moves the job's progress and message, and is not kept in its log
        "epoch": epoch + 1,
        "epochs": epochs,
        "step": step,
        "steps": steps,
        "eta_s": round(eta),
        "loss": round(loss, 4),
        "progress": round((epoch + step / max(1, steps)) / max(1, epochs), 4),
        "message": f"epoch {epoch + 1}/{epochs} · step {step}/{steps} · loss {loss:.3f}{last} · ETA {_span(eta)}",
    }


def _span(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def _emit(progress: Progress | None, json_mode: bool, event: dict) -> None:
    if progress:
        progress(event)
    if json_mode:
        print(json.dumps(event), flush=True)


def _init_weights(model: nn.Module, init_from: Path, model_name: str, main: bool) -> None:
    ck = torch.load(init_from, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict):
        raise ValueError(f"{init_from} is neither an edgeloop checkpoint nor a state dict")
    if "state_dict" in ck and "model" in ck:  # an edgeloop checkpoint
        if ck["model"] != model_name:
            raise ValueError(f"{init_from} holds a {ck['model']} model, not {model_name}")
        state = ck["state_dict"]
    else:  # weights the user gives (e.g. torchvision's ImageNet .pth): a plain state dict
        state = ck
        if not any(k in model.state_dict() for k in state):
            raise ValueError(f"{init_from}: none of its tensors belong to a {model_name} model")
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    if main and len(fitting) < len(own):
        print(f"fine-tune: {len(own) - len(fitting)} tensors re-initialised (class count changed)", file=sys.stderr)


def _train_split(dv: DatasetVersion, hard_share: float) -> list[Sample]:
    train_s = dv.split("train")
    hard = [x for x in train_s if x.source.startswith("sample:")]
    if hard_share > 0 and hard and len(hard) < hard_share * len(train_s):
        # a handful of reviewed hard samples among thousands would barely move a fine-tune: repeat them until
        # they are `hard_share` of an epoch (at most 20 times each)
        repeat = min(20, int(hard_share * (len(train_s) - len(hard)) / ((1 - hard_share) * len(hard))))
        train_s = train_s + hard * max(0, repeat - 1)
    return train_s


def run(
    dv: DatasetVersion,
    cfg: TrainConfig,
    out_dir: Path,
    progress: Progress | None = None,
    progress_mode: str = "bar",
    on_checkpoint: Callable[[list[Path]], None] | None = None,
) -> dict[str, Any]:
    """Train; returns the summary written to out_dir/summary.json (rank 0). Rank 0 calls `on_checkpoint` with
    the files it has just written (checkpoints, metrics, summary) before it reports the epoch."""
    import torch.distributed as dist

    mk = kind(cfg.model)
    if mk.task != dv.task:
        raise ValueError(f"{cfg.model} is a {mk.task} model but {dv.ref} is a {dv.task} dataset")
    size = cfg.size or mk.default_size
    given_group = dist.is_available() and dist.is_initialized()  # Ray Train sets up the process group itself
    world = dist.get_world_size() if given_group else int(os.environ.get("WORLD_SIZE", "1"))
    rank = dist.get_rank() if given_group else int(os.environ.get("RANK", "0"))
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world > 1:
        if not given_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":  # one GPU per process; a worker that sees one GPU has it as cuda:0
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local if torch.cuda.device_count() > local else 0)
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    main = rank == 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_mode = progress_mode == "json" and main
    cuda = device.type == "cuda"
    workers = cfg.workers if cfg.workers is not None else (min(4, max(1, (os.cpu_count() or 2) // 2)) if cuda else 0)

    train_s, val_s = _train_split(dv, cfg.hard_share), dv.split("val")
    if not train_s:
        raise ValueError(f"{dv.ref} has no training samples")
    if not val_s:
        raise ValueError(f"{dv.ref} has no validation samples")
    model = build(cfg.model, len(dv.classes), size).to(device)
    if cuda:
        torch.backends.cudnn.benchmark = True  # one input shape throughout: let cuDNN pick its fastest kernels
        model = model.to(memory_format=torch.channels_last)
    start_epoch, best, history = 0, -1.0, []
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=5e-4)
    if cfg.init_from is not None:
        _init_weights(model, cfg.init_from, cfg.model, main)
    last = out_dir / "last.pt"
    if cfg.resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, best, history = ck["epoch"], ck.get("best", -1.0), ck.get("history", [])
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    spill = out_dir / "cache" / f"rank{rank}.u8.npy"
    train_data = decode(dv, train_s, size, dv.task, workers, spill, cfg.cache_in_memory_mb)
    val_data = decode(dv, val_s, size, dv.task, workers, None, cfg.cache_in_memory_mb) if main else None
    sampler: torch.utils.data.DistributedSampler | None = None
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(_Sized(len(train_data)), world, rank, seed=cfg.seed)
    loader = batches(train_data, cfg.batch, workers, cuda, cfg.seed, sampler)
    aug_gen = torch.Generator()
    aug_gen.manual_seed(cfg.seed * 1000 + rank)
    steps_per_epoch = max(1, len(loader))
    steps_total = cfg.epochs * steps_per_epoch
    # warm-up then cosine to 2 % of lr over the *planned* steps; with max_minutes the plan shrinks to the
    # epochs that fit, so the rate still anneals before the time runs out
    plan = {"epochs": cfg.epochs}
    warm = max(1, int(0.05 * steps_total))

    def lr_factor(step: int) -> float:
        total = max(warm + 1, plan["epochs"] * steps_per_epoch)
        if step < warm:
            return (step + 1) / warm
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))

    for g in opt.param_groups:
        g.setdefault("initial_lr", cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor, last_epoch=start_epoch * steps_per_epoch - 1)
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)  # bf16 needs no scaling
    metric_name = "mAP50" if dv.task == "detect" else "top1"
    t_start = time.monotonic()
    bar = None
    if main and progress_mode == "bar":
        from tqdm import tqdm

        bar = tqdm(total=steps_total, initial=start_epoch * steps_per_epoch, unit="step", file=sys.stderr,
                   disable=not sys.stderr.isatty())  # fmt: skip
    stopped_early = False
    last_report, done_steps, images_seen, busy_s = time.monotonic(), 0, 0, 0.0
    for epoch in range(start_epoch, cfg.epochs):
        if epoch >= plan["epochs"]:
            break
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        losses: list[float] = []
        t_epoch = time.monotonic()
        for x, boxes, labels in loader:
            x = x.to(device, non_blocking=True)
            x, boxes = augment(x, boxes, dv.task, aug_gen)
            x = normalise(x, mk.mean, mk.std)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cuda):
                if dv.task == "detect":
                    logits, ltrb = net(x)
                    loss = detection_loss(model, logits.float(), ltrb.float(), boxes, labels)  # type: ignore[arg-type]
                else:
                    target = torch.stack([lab[0] for lab in labels]).to(device, non_blocking=True)
                    loss = F.cross_entropy(net(x).float(), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.item())
            done_steps += 1
            images_seen += x.shape[0]
            if main and time.monotonic() - last_report >= 3.0:  # inside a long epoch: where it is, and the ETA
                last_report = time.monotonic()
                event = _step_event(epoch, plan["epochs"], len(losses), steps_per_epoch, done_steps,
                                    last_report - t_start, losses[-1], history, metric_name)  # fmt: skip
                _emit(progress, json_mode, event)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        train_s_epoch = time.monotonic() - t_epoch
        busy_s += train_s_epoch
        if world > 1:
            dist.barrier()
        if main and val_data is not None:
            metrics = validate(model, val_data, dv.task, mk, device, len(dv.classes))
            rec = {
                "event": "epoch",
                "epoch": epoch + 1,
                "epochs": cfg.epochs,
                "loss": round(float(np.mean(losses)), 4),
                "lr": round(float(sched.get_last_lr()[0]), 6),
                "seconds": round(time.monotonic() - t_epoch, 1),
                "images_per_s": round(len(losses) * cfg.batch * world / max(1e-9, train_s_epoch), 1),
                **metrics,
            }
            history.append(rec)
            written: list[Path] = []
            with open(out_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            ck = {
                "model": cfg.model,
                "task": dv.task,
                "classes": list(dv.classes),
                "size": size,
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch + 1,
                "best": max(best, metrics[metric_name]),
                "history": history,
                "dataset": {"ref": dv.ref, "id": dv.id},
                "init_from": str(cfg.init_from) if cfg.init_from else None,
            }
            torch.save(ck, out_dir / ".last.pt.tmp")
            os.replace(out_dir / ".last.pt.tmp", last)
            if metrics[metric_name] > best:
                best = metrics[metric_name]
                torch.save(ck, out_dir / ".best.pt.tmp")
                os.replace(out_dir / ".best.pt.tmp", out_dir / "best.pt")
                written.append(out_dir / "best.pt")
            if on_checkpoint is not None:
                on_checkpoint([*written, last, out_dir / "metrics.jsonl"])
            _emit(progress, json_mode, {**rec, "progress": round((epoch + 1) / plan["epochs"], 4)})
            if bar is not None:
                bar.write(json.dumps(rec))
        if cfg.max_minutes is not None:
            elapsed = time.monotonic() - t_start
            per_epoch = elapsed / (epoch + 1 - start_epoch)
            fits = epoch + 1 + int(max(0.0, cfg.max_minutes * 60 - elapsed) // per_epoch)
            plan["epochs"] = max(epoch + 1, min(cfg.epochs, fits))
            if epoch + 1 >= plan["epochs"] and epoch + 1 < cfg.epochs:
                stopped_early = True
                break
    if bar is not None:
        bar.close()
    summary: dict[str, Any] = {}
    if main:
        summary = {
            "event": "done",
            "model": cfg.model,
            "dataset": dv.ref,
            "epochs_run": len(history),
            "train_samples": len(train_s),
            "stopped_early": stopped_early,
            "best": {metric_name: best},
            "last": history[-1] if history else None,
            "seconds": round(time.monotonic() - t_start, 1),
            "images_per_s": round(images_seen * world / max(1e-9, busy_s), 1),
            "device": str(device),
            "loader_workers": workers,
            "amp": str(amp_dtype).removeprefix("torch.") if cuda else None,
            "checkpoint": str(out_dir / "best.pt"),
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        if on_checkpoint is not None:
            on_checkpoint([out_dir / "summary.json"])
        _emit(progress, json_mode, summary)
    if world > 1:
        # replicas must hold identical weights after every step; check it once at the end
        flat = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
        sums = [torch.zeros(2) for _ in range(world)]
        dist.all_gather(sums, torch.stack([flat.sum(), (flat * flat).sum()]))
        in_sync = all(torch.allclose(sums[0], x, rtol=1e-5, atol=1e-6) for x in sums)
        if main:
            summary["ddp"] = {"world": world, "backend": dist.get_backend(), "in_sync": bool(in_sync)}
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        dist.barrier()
        if not given_group:
            dist.destroy_process_group()
    return summary
