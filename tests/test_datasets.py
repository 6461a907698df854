"""Datasets: synthetic scenes with exact boxes, immutable content-addressed versions, COCO / YOLO in and out,
and bad input refused with the file and line named and nothing written. Training and evaluation trust these
boxes and splits; if they were wrong, every mAP the zoo reports would be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from model_zoo.datasets.formats import export_coco, export_yolo, load_coco, load_yolo
from model_zoo.datasets.store import DatasetError, DatasetStore, NewSample, encode_image, split_of, synthesize
from model_zoo.datasets.synthetic_scenes import PRESETS, SceneConfig, preset, render_scene


def test_scenes_are_reproducible_and_seeds_differ() -> None:
    a, b = render_scene(preset("medium"), 7, 3), render_scene(preset("medium"), 7, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    c = render_scene(preset("medium"), 8, 3)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("name", list(PRESETS))
def test_boxes_are_the_exact_extent_of_the_visible_object(name: str) -> None:
    cfg = preset(name, noise=0.0, blur=(0.0, 0.0))  # no noise or blur: object pixels keep one colour
    for i in range(6):
        sc = render_scene(cfg, 1, i, (200, 150))
        assert len(sc.boxes) == len(sc.labels) == sc.owners.max() + 1
        for k, box in enumerate(sc.boxes):
            ys, xs = np.nonzero(sc.owners == k)
            assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            colours = sc.image[sc.owners == k].reshape(-1, 3).astype(int)
            assert np.ptp(colours, axis=0).max() <= 1, "an object's pixels are one flat colour"
            # the ring of pixels just outside the object is not that colour: the object really ends there
            ring = cv2.dilate((sc.owners == k).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            ring &= sc.owners == -1
            if ring.any():
                outside = sc.image[ring].reshape(-1, 3).astype(int)
                assert np.median(np.abs(outside - colours[0]).sum(axis=1)) > 20


def test_presets_shift_the_domain() -> None:
    day = np.mean([render_scene(preset("easy"), 0, i).image.mean() for i in range(8)])
    night = np.mean([render_scene(preset("night"), 0, i).image.mean() for i in range(8)])
    assert night < day * 0.6
    with pytest.raises(ValueError, match="unknown shape"):
        SceneConfig(classes=("circle", "hexagon"))


def test_versions_are_immutable_content_addressed_and_keep_their_split(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    v1 = synthesize(store, "shapes", "easy", 40, seed=1, size=(96, 96))
    v1_file = (tmp_path / "shapes" / "v1.json").read_bytes()
    assert v1.version == 1 and len(v1.samples) == 40 and v1.split("val") and v1.split("train")
    assert all(s.split == split_of(s.sha256, 0.2) for s in v1.samples)
    v2 = synthesize(store, "shapes", "easy", 20, seed=2, size=(96, 96), parent=v1)
    assert v2.version == 2 and v2.parent == "shapes:1" and len(v2.samples) == 60
    old = {s.sha256: s.split for s in v1.samples}
    assert all(old[s.sha256] == s.split for s in v2.samples if s.sha256 in old), "a sample never changes split"
    assert (tmp_path / "shapes" / "v1.json").read_bytes() == v1_file
    assert store.load("shapes", 1).id == v1.id and store.load("shapes").version == 2
    # the same content is the same id, and images are stored once
    other = DatasetStore(tmp_path / "other")
    assert synthesize(other, "shapes", "easy", 40, seed=1, size=(96, 96)).id == v1.id
    assert len(list((tmp_path / "objects").rglob("*.jpg"))) == 60


def test_coco_and_yolo_round_trip(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    dv = synthesize(store, "shapes", "medium", 12, seed=3, size=(128, 96))
    for fmt in ("coco", "yolo"):
        out = tmp_path / fmt
        if fmt == "coco":
            classes, samples = load_coco(export_coco(dv, out))
        else:
            export_yolo(dv, out)
            classes, samples = load_yolo(out)
        assert classes == list(dv.classes) and len(samples) == len(dv.samples)
        back = store.create(f"back-{fmt}", "detect", classes, samples)
        by_sha = {s.sha256: s for s in back.samples}
        for s in dv.samples:
            b = by_sha[s.sha256]
            assert b.labels == s.labels
            assert np.allclose(b.boxes, s.boxes, atol=0.02) if s.boxes else not b.boxes


def _coco(tmp_path: Path, anns: list[dict], images: int = 2) -> Path:
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    img = np.full((60, 80, 3), 90, np.uint8)
    imgs = []
    for i in range(images):
        (tmp_path / "images" / f"im{i}.jpg").write_bytes(encode_image(img, ".jpg"))
        imgs.append({"id": i + 1, "file_name": f"im{i}.jpg", "width": 80, "height": 60})
    doc = {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def test_coco_errors_name_file_and_line(tmp_path: Path) -> None:
    good = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}
    path = _coco(tmp_path / "a", [good, {"id": 2, "image_id": 2, "category_id": 1, "bbox": [70, 10, 40, 20]}])
    with pytest.raises(DatasetError) as e:
        load_coco(path)
    # the second annotation object starts on the line after the first one's closing brace
    assert f"{path}:" in str(e.value) and "outside the 80x60 image" in str(e.value)
    assert int(str(e.value).split(":")[1]) > _line_of(path, '"annotations"')

    path = _coco(tmp_path / "b", [{**good, "category_id": 9}])
    with pytest.raises(DatasetError, match=r"annotations.json:\d+: unknown category_id 9"):
        load_coco(path)

    path = _coco(tmp_path / "c", [good])
    (tmp_path / "c" / "images" / "im1.jpg").unlink()
    with pytest.raises(DatasetError, match=r"annotations.json:\d+: image .*im1.jpg is missing"):
        load_coco(path)

    path = _coco(tmp_path / "d", [], images=0)
    with pytest.raises(DatasetError, match="zero images"):
        load_coco(path)

    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "annotations.json").write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match=r"annotations.json:2: not valid JSON"):
        load_coco(tmp_path / "e" / "annotations.json")


def test_yolo_errors_name_file_and_line_and_nothing_is_written(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "images" / "a.png").write_bytes(encode_image(np.zeros((50, 50, 3), np.uint8)))
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n\n1 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"labels/a.txt:4: unknown class 5"):
        load_yolo(root)
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DatasetError, match=r"a.txt:1: expected 'class cx cy w h'"):
        load_yolo(root)
    (root / "labels" / "a.txt").write_text("0 0.95 0.5 0.3 0.2\n")
    with pytest.raises(DatasetError, match=r"a.txt:1: box .* outside the 50x50 image"):
        load_yolo(root)
    (root / "labels" / "b.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"b.txt: label file has no image"):
        load_yolo(root)

    store = DatasetStore(tmp_path / "store")
    bad = NewSample(encode_image(np.zeros((20, 20, 3), np.uint8)), 20, 20, [(0, 0, 30, 10)], [0], "x.png")
    with pytest.raises(DatasetError, match="x.png: box .* outside"):
        store.create("d", "detect", ["cat"], [bad])
    with pytest.raises(DatasetError, match="zero samples"):
        store.create("d", "detect", ["cat"], [])
    assert store.versions("d") == [] and not (tmp_path / "store" / "objects").exists()
