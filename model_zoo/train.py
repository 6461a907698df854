"""Training: a dataset version in, checkpoints and per-epoch metrics out.

    python -m model_zoo.train --data DIR --dataset NAME[:VERSION] --model eldet --epochs 20 --out RUN_DIR
    torchrun --nproc_per_node 2 -m model_zoo.train …      (DDP: gloo on CPU, nccl on GPU)

Augmentation is torchvision transforms v2 (boxes transformed with the image); AMP runs on GPU. `--from`
fine-tunes from a checkpoint, `--resume` continues RUN_DIR/last.pt. Rank 0 writes `last.pt`, `best.pt`
(best validation metric) and `metrics.jsonl`; with `--progress json` it prints one JSON object per line
(what the server's job runner reads), otherwise a progress bar.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_agent.protocol.manifest import parse_ref_latest
from model_zoo.datasets.store import DatasetStore, DatasetVersion, Sample
from model_zoo.evaluate import EVAL_CONF, coco_map, top1
from model_zoo.models import ElDet, build, kind

Progress = Callable[[dict[str, Any]], None]
LETTERBOX_FILL = 114


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    h, w = img.shape[:2]
    r = min(size / w, size / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    px, py = (size - nw) // 2, (size - nh) // 2
    out = np.full((size, size, 3), LETTERBOX_FILL, np.uint8)
    out[py : py + nh, px : px + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, r, px, py


class _Images(torch.utils.data.Dataset):
    """Decoded, letterboxed (detect) or resized (classify) RGB images, cached in memory as uint8."""

    def __init__(self, dv: DatasetVersion, samples: list[Sample], size: int, task: str, augment: bool) -> None:
        from torchvision.transforms import v2

        self.dv, self.samples, self.size, self.task = dv, samples, size, task
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if task == "detect":
            ops: list = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        else:
            ops = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        ops += (
            [v2.ColorJitter(0.3, 0.3, 0.3, 0.03), v2.SanitizeBoundingBoxes(min_size=2)]
            if task == "detect"
            else [v2.ColorJitter(0.3, 0.3, 0.3, 0.03)]
        )
        self.tf = v2.Compose(ops) if augment else None

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if i not in self.cache:
            s = self.samples[i]
            img = cv2.cvtColor(self.dv.load_image(s), cv2.COLOR_BGR2RGB)
            if self.task == "detect":
                img, r, px, py = letterbox(img, self.size)
                b = np.asarray(s.boxes, np.float32).reshape(-1, 4) * r + np.array([px, py, px, py], np.float32)
            else:
                img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
                b = np.zeros((0, 4), np.float32)
            self.cache[i] = (
                torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                torch.from_numpy(b),
                torch.as_tensor(s.labels, dtype=torch.int64),
            )
        return self.cache[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        img, boxes, labels = self._load(i)
        if self.tf is not None:
            if self.task == "detect":
                out = self.tf(
                    {
                        "image": tv_tensors.Image(img),
                        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(self.size, self.size)),
                        "labels": labels,
                    }
                )
                img, boxes, labels = out["image"], out["boxes"].as_subclass(torch.Tensor), out["labels"]
            else:
                img = self.tf(tv_tensors.Image(img)).as_subclass(torch.Tensor)
        return img, boxes, labels


def _collate(batch: list) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]


def _normalise(x: torch.Tensor, k_mean: tuple, k_std: tuple) -> torch.Tensor:
    mean = torch.tensor(k_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(k_std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def _giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of paired xyxy boxes (M, 4)."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1), (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1) + 1e-7
    return iou, iou - (hull - union) / hull


def detection_loss(
    model: ElDet, logits: torch.Tensor, ltrb: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]
) -> torch.Tensor:
    """Centre-sampled anchor-free assignment; quality focal loss (target = IoU) + GIoU box loss."""
    b, c, n = logits.shape
    centres = model.centres.t()  # (N, 2)
    pred_xyxy = model.decode(ltrb).permute(0, 2, 1)  # (B, N, 4)
    target = torch.zeros_like(logits)
    box_losses, n_pos = [], 0
    radius = 1.5 * model.stride
    for i in range(b):
        gt, lab = boxes[i].to(logits.device), labels[i].to(logits.device)
        if gt.numel() == 0:
            continue
        px, py = centres[:, 0:1], centres[:, 1:2]  # (N, 1)
        inside = (px > gt[:, 0]) & (px < gt[:, 2]) & (py > gt[:, 1]) & (py < gt[:, 3])  # (N, K)
        gcx, gcy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
        near = ((px - gcx).abs() < radius) & ((py - gcy).abs() < radius)
        cand = inside & near
        # every box gets at least its nearest point, however small it is
        nearest = ((px - gcx) ** 2 + (py - gcy) ** 2).argmin(0)
        cand[nearest, torch.arange(len(gt), device=gt.device)] = True
        area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).expand(n, -1)
        area = torch.where(cand, area, torch.full_like(area, float("inf")))
        best_area, owner = area.min(1)
        pos = torch.isfinite(best_area)
        if not pos.any():
            continue
        gt_pos, lab_pos = gt[owner[pos]], lab[owner[pos]]
        iou, giou = _giou(pred_xyxy[i, pos], gt_pos)
        target[i, lab_pos, pos.nonzero().squeeze(1)] = iou.detach().clamp(min=0.05).to(target.dtype)
        box_losses.append((1.0 - giou).sum())
        n_pos += int(pos.sum())
    sig = logits.sigmoid()
    qfl = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (sig - target).abs().pow(2)
    norm = max(1, n_pos)
    loss = qfl.sum() / norm
    if box_losses:
        loss = loss + 2.0 * torch.stack(box_losses).sum() / norm
    return loss


@torch.no_grad()
def predict_detections(
    model: ElDet, x: torch.Tensor, conf: float = EVAL_CONF, iou: float = 0.45, max_det: int = 100
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from torchvision.ops import batched_nms

    logits, ltrb = model.raw(x)
    scores_all, xyxy = logits.sigmoid(), model.decode(ltrb).permute(0, 2, 1)
    out = []
    for i in range(x.shape[0]):
        s, cls = scores_all[i].max(0)
        keep = s >= conf
        bx, s, cls = xyxy[i, keep], s[keep], cls[keep]
        k = batched_nms(bx, s, cls, iou)[:max_det]
        out.append((bx[k].cpu().numpy(), s[k].cpu().numpy(), cls[k].cpu().numpy()))
    return out


def validate(model: nn.Module, ds: _Images, task: str, mk, device: torch.device, batch: int = 32) -> dict:
    model.eval()
    preds: list = []
    with torch.no_grad():
        for start in range(0, len(ds), batch):
            items = [ds[i] for i in range(start, min(len(ds), start + batch))]
            x = _normalise(torch.stack([it[0] for it in items]).to(device), mk.mean, mk.std)
            if task == "detect":
                preds += predict_detections(model, x)  # type: ignore[arg-type]
            else:
                preds += model(x).argmax(1).tolist()
    model.train()
    # validation images are letterboxed: score against the letterboxed boxes
    samples = [
        Sample(s.sha256, s.ext, ds.size, ds.size, tuple(map(tuple, ds[i][1].tolist())), s.labels, s.split)
        for i, s in enumerate(ds.samples)
    ]
    if task == "detect":
        return coco_map(samples, preds, len(ds.dv.classes))
    return top1(samples, preds)


def _step_event(
    epoch: int,
    epochs: int,
    step: int,
    steps: int,
    done: int,
    elapsed: float,
    loss: float,
    history: list[dict],
    metric: str,
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
) -> dict[str, Any]:
    """Train; returns the summary written to out_dir/summary.json (rank 0)."""
    import torch.distributed as dist

    mk = kind(model_name)
    if mk.task != dv.task:
        raise ValueError(f"{model_name} is a {mk.task} model but {dv.ref} is a {dv.task} dataset")
    size = size or mk.default_size
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    torch.manual_seed(seed)
    np.random.seed(seed)
    main = rank == 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_mode = progress_mode == "json" and main

    train_s, val_s = dv.split("train"), dv.split("val")
    hard = [x for x in train_s if x.source.startswith("sample:")]
    if hard_share > 0 and hard and len(hard) < hard_share * len(train_s):
        # a handful of reviewed hard samples among thousands would barely move a fine-tune: repeat them until
        # they are `hard_share` of an epoch (at most 20 times each)
        repeat = min(20, int(hard_share * (len(train_s) - len(hard)) / ((1 - hard_share) * len(hard))))
        train_s = train_s + hard * max(0, repeat - 1)
    if not train_s:
        raise ValueError(f"{dv.ref} has no training samples")
    if not val_s:
        raise ValueError(f"{dv.ref} has no validation samples")
    model = build(model_name, len(dv.classes), size).to(device)
    start_epoch, best, history = 0, -1.0, []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    if init_from is not None:
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
    last = out_dir / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, best, history = ck["epoch"], ck.get("best", -1.0), ck.get("history", [])
    ddp_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_ds = _Images(dv, train_s, size, dv.task, augment=True)
    val_ds = _Images(dv, val_s, size, dv.task, augment=False)
    sampler: torch.utils.data.DistributedSampler | None = (
        torch.utils.data.DistributedSampler(train_ds, world, rank, seed=seed) if world > 1 else None
    )
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=batch, shuffle=sampler is None, sampler=sampler, collate_fn=_collate, drop_last=True
    )
    steps_total = max(1, epochs * len(loader))
    # warm-up then cosine to 2 % of lr over the *planned* steps; with --max-minutes the plan shrinks to the
    # epochs that fit, so the rate still anneals before the time runs out
    plan = {"epochs": epochs}
    warm = max(1, int(0.05 * steps_total))

    def lr_factor(step: int) -> float:
        total = max(warm + 1, plan["epochs"] * len(loader))
        if step < warm:
            return (step + 1) / warm
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))

    for g in opt.param_groups:
        g.setdefault("initial_lr", lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor, last_epoch=start_epoch * len(loader) - 1)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    metric_name = "mAP50" if dv.task == "detect" else "top1"
    t_start = time.monotonic()
    bar = None
    if main and progress_mode == "bar":
        from tqdm import tqdm

        bar = tqdm(
            total=steps_total,
            initial=start_epoch * len(loader),
            unit="step",
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
        )
    stopped_early = False
    last_report, done_steps = time.monotonic(), 0
    for epoch in range(start_epoch, epochs):
        if epoch >= plan["epochs"]:
            break
        if sampler is not None:
            sampler.set_epoch(epoch)
        ddp_model.train()
        losses = []
        t_epoch = time.monotonic()
        for x, boxes, labels in loader:
            x = _normalise(x.to(device, non_blocking=True), mk.mean, mk.std)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                if dv.task == "detect":
                    logits, ltrb = ddp_model(x)
                    loss = detection_loss(model, logits.float(), ltrb.float(), boxes, labels)  # type: ignore[arg-type]
                else:
                    loss = F.cross_entropy(ddp_model(x).float(), torch.stack([lab[0] for lab in labels]).to(device))
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
            if main and time.monotonic() - last_report >= 3.0:  # inside a long epoch: where it is, and the ETA
                last_report = time.monotonic()
                _emit(
                    progress,
                    json_mode,
                    _step_event(
                        epoch,
                        plan["epochs"],
                        len(losses),
                        len(loader),
                        done_steps,
                        last_report - t_start,
                        losses[-1],
                        history,
                        metric_name,
                    ),
                )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        if world > 1:
            dist.barrier()
        if main:
            metrics = validate(model, val_ds, dv.task, mk, device)
            rec = {
                "event": "epoch",
                "epoch": epoch + 1,
                "epochs": epochs,
                "loss": round(float(np.mean(losses)), 4),
                "lr": round(float(sched.get_last_lr()[0]), 6),
                "seconds": round(time.monotonic() - t_epoch, 1),
                **metrics,
            }
            history.append(rec)
            with open(out_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            ck = {
                "model": model_name,
                "task": dv.task,
                "classes": list(dv.classes),
                "size": size,
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch + 1,
                "best": max(best, metrics[metric_name]),
                "history": history,
                "dataset": {"ref": dv.ref, "id": dv.id},
                "init_from": str(init_from) if init_from else None,
            }
            torch.save(ck, out_dir / ".last.pt.tmp")
            os.replace(out_dir / ".last.pt.tmp", last)
            if metrics[metric_name] > best:
                best = metrics[metric_name]
                torch.save(ck, out_dir / ".best.pt.tmp")
                os.replace(out_dir / ".best.pt.tmp", out_dir / "best.pt")
            _emit(progress, json_mode, {**rec, "progress": round((epoch + 1) / plan["epochs"], 4)})
            if bar is not None:
                bar.write(json.dumps(rec))
        if max_minutes is not None:
            elapsed = time.monotonic() - t_start
            per_epoch = elapsed / (epoch + 1 - start_epoch)
            fits = epoch + 1 + int(max(0.0, max_minutes * 60 - elapsed) // per_epoch)
            plan["epochs"] = max(epoch + 1, min(epochs, fits))
            if epoch + 1 >= plan["epochs"] and epoch + 1 < epochs:
                stopped_early = True
                break
    if bar is not None:
        bar.close()
    summary: dict[str, Any] = {}
    if main:
        summary = {
            "event": "done",
            "model": model_name,
            "dataset": dv.ref,
            "epochs_run": len(history),
            "train_samples": len(train_s),
            "stopped_early": stopped_early,
            "best": {metric_name: best},
            "last": history[-1] if history else None,
            "seconds": round(time.monotonic() - t_start, 1),
            "checkpoint": str(out_dir / "best.pt"),
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
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
        dist.destroy_process_group()
    return summary


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
        "--hard-share",
        type=float,
        default=0.0,
        help="repeat reviewed hard samples (source sample:<id>) until they are this share of an epoch",
    )
    a = p.parse_args(argv)
    if a.epochs < 1 or a.batch < 1 or not math.isfinite(a.lr) or a.lr <= 0:
        p.error("--epochs and --batch must be >= 1 and --lr > 0")
    name, ver = parse_ref_latest(a.dataset)
    try:
        dv = DatasetStore(a.data).load(name, ver)
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
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
