"""The detector's loss and its prediction for validation (the classifiers use cross-entropy and argmax)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model_zoo.evaluate import EVAL_CONF
from model_zoo.models import ElDet


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
