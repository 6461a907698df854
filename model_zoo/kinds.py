"""The architectures the zoo can train, and how the agent must feed them (no torch import here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    name: str
    task: str  # detect | classify
    default_size: int
    resize: str  # how the agent fits frames: letterbox | stretch
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS: dict[str, ModelKind] = {
    "eldet": ModelKind("eldet", "detect", 256, "letterbox", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "mobilenet_v3_small": ModelKind("mobilenet_v3_small", "classify", 224, "stretch", IMAGENET_MEAN, IMAGENET_STD),
    "resnet18": ModelKind("resnet18", "classify", 224, "stretch", IMAGENET_MEAN, IMAGENET_STD),
}


def kind(name: str) -> ModelKind:
    if name not in KINDS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]
