"""The training input pipeline: images decoded once and shared, augmentation on whole batches that moves
every box with its image. If these fail, the detector learns from boxes that no longer cover their objects,
or every loader worker holds its own copy of the dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is installed by `make test`")

from model_zoo.datasets.store import DatasetStore, synthesize  # noqa: E402
from model_zoo.training.augment import augment, colour_jitter, crop_flip_classify, flip_detect  # noqa: E402
from model_zoo.training.data import batches, decode  # noqa: E402


def _scene(n: int, size: int = 64) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Black images each with one white rectangle at a different place; its box in xyxy pixels."""
    x = torch.zeros(n, 3, size, size)
    boxes = []
    for i in range(n):
        x1, y1 = 2 + 2 * i, 6 + 2 * i
        x2, y2 = x1 + 5 + i // 2, y1 + 7
        x[i, :, y1:y2, x1:x2] = 255
        boxes.append(torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32))
    return x, boxes


def _white_box(img: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(img[0] > 127, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_flips_move_every_box_with_its_image_and_repeat_with_the_seed() -> None:
    x, boxes = _scene(16)
    g = torch.Generator().manual_seed(3)
    fx, fb = flip_detect(x, boxes, g)
    flipped = 0
    for i in range(16):
        assert _white_box(fx[i]) == fb[i][0].tolist(), i  # the box still covers exactly the object
        flipped += fb[i][0].tolist() != boxes[i][0].tolist()
    assert 0 < flipped < 16  # some flipped, some not
    again = flip_detect(x, boxes, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], fx) and all(torch.equal(a, b) for a, b in zip(again[1], fb, strict=True))


def test_colour_jitter_and_crops_keep_shape_range_and_vary_per_image() -> None:
    x = torch.rand(8, 3, 32, 32) * 255
    g = torch.Generator().manual_seed(0)
    j = colour_jitter(x.clone(), g)
    assert j.shape == x.shape and j.min() >= 0 and j.max() <= 255
    ratios = (j.mean((1, 2, 3)) / x.mean((1, 2, 3))).tolist()
    assert max(ratios) - min(ratios) > 0.05  # each image its own factors
    c = crop_flip_classify(x, g)
    assert c.shape == x.shape and torch.isfinite(c).all()
    out, b = augment(x.to(torch.uint8), [torch.zeros((0, 4))] * 8, "classify", g)
    assert out.dtype == torch.float32 and out.shape == x.shape and len(b) == 8


def test_images_are_decoded_once_into_one_shared_array_and_batched_by_index(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "data")
    dv = synthesize(store, "s", "easy", 24, seed=1, size=(96, 72))
    samples = dv.split("train")
    data = decode(dv, samples, 64, "detect", workers=2, spill=None, limit_mb=64)
    assert data.images.shape == (len(samples), 3, 64, 64) and data.images.is_shared()
    assert all(b.shape[1] == 4 and (b[:, 2:] <= 64.5).all() for b in data.boxes)  # letterboxed into 64 x 64
    spilled = decode(dv, samples, 64, "detect", workers=0, spill=tmp_path / "c.npy", limit_mb=0)
    assert (tmp_path / "c.npy").stat().st_size >= len(samples) * 3 * 64 * 64  # a large set goes to a mapped file
    assert torch.equal(spilled.images, data.images)
    loader = batches(data, 4, workers=1, pin=False, seed=0)
    seen = []
    for x, bx, lab in loader:
        assert x.shape == (4, 3, 64, 64) and x.dtype == torch.uint8 and len(bx) == len(lab) == 4
        seen.append(x)
    assert len(seen) == len(samples) // 4
