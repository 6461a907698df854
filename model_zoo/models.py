"""Model architectures the zoo trains: torchvision classifiers and a compact anchor-free detector.

`eldet` is a small FPN-lite detector with one stride-8 level and a shared head. In export mode it decodes
its own boxes and emits the Ultralytics YOLOv8 layout, (1, 4 + C, N) with rows cx, cy, w, h (input
pixels) and per-class sigmoid scores, so the agent's yolov8 decoder (and its NMS) serves it unchanged —
and serves Ultralytics exports too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.kinds import KINDS, ModelKind, kind  # noqa: F401  (re-exported)


def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ElDet(nn.Module):
    stride = 8

    def __init__(self, num_classes: int, size: int = 256, width: int = 64) -> None:
        super().__init__()
        if size % 32:
            raise ValueError(f"eldet input size must be a multiple of 32, got {size}")
        self.num_classes, self.size = num_classes, size
        self.stem = nn.Sequential(_cbr(3, 16, 2), _cbr(16, 32, 2), _cbr(32, 32))  # stride 4
        self.c3 = nn.Sequential(_cbr(32, 64, 2), _cbr(64, 64))  # stride 8
        self.c4 = nn.Sequential(_cbr(64, 96, 2), _cbr(96, 96))  # stride 16
        self.c5 = nn.Sequential(_cbr(96, 128, 2), _cbr(128, 128))  # stride 32
        self.l3, self.l4, self.l5 = nn.Conv2d(64, width, 1), nn.Conv2d(96, width, 1), nn.Conv2d(128, width, 1)
        self.neck = nn.Sequential(_cbr(width, width), _cbr(width, width))
        self.cls = nn.Conv2d(width, num_classes, 1)
        self.box = nn.Conv2d(width, 4, 1)
        assert self.cls.bias is not None and self.box.bias is not None  # Conv2d(bias=True)
        nn.init.constant_(self.cls.bias, -4.6)  # prior 0.01: the loss starts near its floor for background
        nn.init.constant_(self.box.bias, 1.0)
        g = size // self.stride
        ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()]).float().add(0.5).mul(self.stride)  # (2, N)
        self.centres: torch.Tensor
        self.register_buffer("centres", centres, persistent=False)
        self.export = False

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls logits (B, C, N), ltrb distances in pixels (B, 4, N))."""
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p4 = self.l4(c4) + F.interpolate(self.l5(c5), scale_factor=2.0, mode="nearest")
        p3 = self.l3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        f = self.neck(p3)
        b = f.shape[0]
        logits = self.cls(f).reshape(b, self.num_classes, -1)
        ltrb = F.softplus(self.box(f)).reshape(b, 4, -1) * self.stride
        return logits, ltrb

    def decode(self, ltrb: torch.Tensor) -> torch.Tensor:
        """ltrb (B, 4, N) -> xyxy (B, 4, N) in input pixels."""
        cx, cy = self.centres[0], self.centres[1]
        return torch.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, ltrb = self.raw(x)
        if not self.export:
            return logits, ltrb
        cx, cy = self.centres[0], self.centres[1]
        left, top, right, bottom = ltrb[:, 0], ltrb[:, 1], ltrb[:, 2], ltrb[:, 3]
        boxes = torch.stack([cx + (right - left) / 2, cy + (bottom - top) / 2, left + right, top + bottom], dim=1)
        return torch.cat([boxes, torch.sigmoid(logits)], dim=1)


def build(name: str, num_classes: int, size: int | None = None) -> nn.Module:
    k = kind(name)
    size = size or k.default_size
    if name == "eldet":
        return ElDet(num_classes, size)
    import torchvision

    if name == "mobilenet_v3_small":
        return torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def export_onnx(model: nn.Module, name: str, size: int, path: str, opset: int = 17) -> None:
    """ONNX with input `images`, static but for a dynamic batch axis; detectors emit the YOLOv8 layout."""
    model = model.eval()
    if isinstance(model, ElDet):
        model.export = True
    try:
        x = torch.zeros(1, 3, size, size)
        out_name = "output0" if kind(name).task == "detect" else "logits"
        with torch.no_grad():
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=[out_name],
                # any batch: the agent runs the frames of many cameras in one inference
                dynamic_axes={"images": {0: "batch"}, out_name: {0: "batch"}},
            )
    finally:
        if isinstance(model, ElDet):
            model.export = False
