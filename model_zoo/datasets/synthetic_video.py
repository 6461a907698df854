"""A synthetic camera: a video whose scenes cycle through colours, with a moving object and noise.

The ground truth of every frame is known: `colour_at(frame_index)`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from model_zoo.datasets.synthetic_scenes import preset, render_scene

COLOURS_BGR = {"red": (40, 40, 200), "green": (40, 200, 40), "blue": (200, 40, 40)}


def colour_at(frame_index: int, fps: int, seconds_per_scene: float) -> str:
    names = list(COLOURS_BGR)
    return names[int(frame_index / (fps * seconds_per_scene)) % len(names)]


def write_color_video(
    path: Path,
    seconds: float = 6.0,
    fps: int = 30,
    size: tuple[int, int] = (320, 240),
    seconds_per_scene: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write an MJPEG .avi (decodable by every OpenCV build)."""
    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPEG video to {path}")
    try:
        for i in range(int(seconds * fps)):
            frame = np.empty((h, w, 3), np.uint8)
            frame[:] = COLOURS_BGR[colour_at(i, fps, seconds_per_scene)]
            noise = rng.integers(-20, 21, size=frame.shape, dtype=np.int16)
            frame = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            x = int((i * 4) % max(1, w - 40))
            cv2.rectangle(frame, (x, h // 2 - 20), (x + 40, h // 2 + 20), (230, 230, 230), -1)
            writer.write(frame)
    finally:
        writer.release()
    return path


def write_scene_video(
    path: Path,
    seconds: float = 12.0,
    fps: int = 30,
    size: tuple[int, int] = (320, 240),
    seconds_per_scene: float = 1.0,
    preset_name: str = "easy",
    seed: int = 1000,
) -> tuple[Path, list[dict]]:
    """A camera of synthetic scenes (a new scene every `seconds_per_scene`), with the exact boxes of each.

    Returns the video path and, per scene, its boxes and class names: the ground truth of every frame.
    """

    cfg = preset(preset_name)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPEG video to {path}")
    truth: list[dict] = []
    per_scene = max(1, int(fps * seconds_per_scene))
    try:
        for i in range(max(1, int(seconds / seconds_per_scene))):
            sc = render_scene(cfg, seed, i, size)
            truth.append({"boxes": sc.boxes.tolist(), "labels": [cfg.classes[k] for k in sc.labels.tolist()]})
            for _ in range(per_scene):
                writer.write(sc.image)
    finally:
        writer.release()
    return path, truth
