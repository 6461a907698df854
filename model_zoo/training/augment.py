"""Augmentation and normalisation of whole batches on the training device (a GPU does them in microseconds;
on the CPU batched tensor ops beat one image at a time in the loader too).

Detection: random horizontal and vertical flips (boxes moved with the image), then colour jitter. Flips
cannot shrink a box, so no box is dropped. Classification: a random resized crop (area 0.6-1, aspect
3/4-4/3) and a horizontal flip as one affine resampling per image, then colour jitter. Colour jitter is
brightness, contrast and saturation, each a factor in [0.7, 1.3] per image (torchvision's ColorJitter(0.3,
0.3, 0.3)); its small hue shift is left out: on these scenes it never paid for its cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_GREY = (0.299, 0.587, 0.114)


def _factors(n: int, strength: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (1.0 + (torch.rand(n, generator=g) * 2 - 1) * strength).to(device).view(n, 1, 1, 1)


def colour_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.3) -> torch.Tensor:
    """x: (B, 3, H, W) float in 0-255."""
    n, dev = x.shape[0], x.device
    grey_w = torch.tensor(_GREY, device=dev, dtype=x.dtype).view(1, 3, 1, 1)
    x = x * _factors(n, strength, g, dev)
    mean = (x * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - mean) * _factors(n, strength, g, dev) + mean
    grey = (x * grey_w).sum(1, keepdim=True)
    x = (x - grey) * _factors(n, strength, g, dev) + grey
    return x.clamp_(0, 255)


def flip_detect(
    x: torch.Tensor, boxes: list[torch.Tensor], g: torch.Generator
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random horizontal and vertical flips per image; xyxy boxes (in pixels of the S x S image) follow."""
    n, size = x.shape[0], x.shape[-1]
    h, v = torch.rand(n, generator=g) < 0.5, torch.rand(n, generator=g) < 0.5
    x = torch.where(h.to(x.device).view(n, 1, 1, 1), x.flip(-1), x)
    x = torch.where(v.to(x.device).view(n, 1, 1, 1), x.flip(-2), x)
    out = []
    for i, b in enumerate(boxes):
        b = b.clone()
        if h[i]:
            b[:, [0, 2]] = size - b[:, [2, 0]]
        if v[i]:
            b[:, [1, 3]] = size - b[:, [3, 1]]
        out.append(b)
    return x, out


def crop_flip_classify(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(scale=(0.6, 1), ratio=(3/4, 4/3)) and a horizontal flip, as one affine per image."""
    n = x.shape[0]
    area = 0.6 + 0.4 * torch.rand(n, generator=g)
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, generator=g))
    w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    cx, cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - w), (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def normalise(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """0-255 -> the model's input scale."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x / 255.0 - m) / s


def augment(
    x: torch.Tensor, boxes: list[torch.Tensor], task: str, g: torch.Generator
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x: (B, 3, S, S) uint8 or float 0-255 on the training device -> float 0-255, boxes moved with it."""
    x = x.float()
    if task == "detect":
        x, boxes = flip_detect(x, boxes, g)
    else:
        x = crop_flip_classify(x, g)
    return colour_jitter(x, g), boxes
