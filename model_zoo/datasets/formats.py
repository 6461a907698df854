"""COCO-json and YOLO-txt folders in and out of dataset versions.

Import validates everything before anything is stored, and every error names the file and line:
a missing image, a box outside its image, an unknown class, a malformed line, zero samples.

COCO: `annotations.json` with images / annotations / categories (bbox = [x, y, w, h] in pixels), images
beside it or in `images/`. YOLO: `images/*.jpg|png`, `labels/<same stem>.txt` with `class cx cy w h`
normalised to 0-1, class names in `classes.txt` (one per line) or `data.yaml` (`names:`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from model_zoo.datasets.store import IMAGE_EXTS, DatasetError, DatasetVersion, NewSample

TOLERANCE = 1.0  # pixels a box may overhang its image (rounding in other tools) before it is an error


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _array_item_lines(text: str, key: str) -> list[int]:
    """Line number of each element of the top-level JSON array `key` (for error messages)."""
    m = re.search(rf'"{re.escape(key)}"\s*:\s*\[', text)
    if not m:
        return []
    dec = json.JSONDecoder()
    pos, lines = m.end(), list[int]()
    ws = re.compile(r"[\s,]*")
    while True:
        pos = ws.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(_line_of(text, pos))
        try:
            _, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return lines


def _image_size(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: not a readable JPEG or PNG image")
    if not (data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n"):
        raise DatasetError(f"{path}: images must be JPEG or PNG")
    return img.shape[1], img.shape[0], data


def _clip_box(box: tuple[float, float, float, float], w: int, h: int, where: str) -> tuple[float, ...]:
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{where}: box {[round(v, 2) for v in box]} has no area")
    if x1 < -TOLERANCE or y1 < -TOLERANCE or x2 > w + TOLERANCE or y2 > h + TOLERANCE:
        raise DatasetError(f"{where}: box {[round(v, 2) for v in box]} is outside the {w}x{h} image")
    return (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))


def load_coco(json_path: Path, images_dir: Path | None = None) -> tuple[list[str], list[NewSample]]:
    json_path = Path(json_path)
    try:
        text = json_path.read_text()
        data = json.loads(text)
    except FileNotFoundError:
        raise DatasetError(f"{json_path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{json_path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DatasetError(f"{json_path}: a COCO file needs 'images' and 'categories' lists")
    anns = data.get("annotations", [])
    img_lines, ann_lines, cat_lines = (_array_item_lines(text, k) for k in ("images", "annotations", "categories"))

    def where(lines: list[int], i: int) -> str:
        return f"{json_path}:{lines[i]}" if i < len(lines) else f"{json_path}"

    cats: dict[int, int] = {}
    classes: list[str] = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or not str(c.get("name", "")).strip():
            raise DatasetError(f"{where(cat_lines, i)}: a category needs an id and a name")
        cats[int(c["id"])] = len(classes)
        classes.append(str(c["name"]).strip())
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{json_path}: duplicate category names")
    base = images_dir or (json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent)
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DatasetError(f"{where(img_lines, i)}: an image needs an id and a file_name")
        p = base / str(im["file_name"])
        if not p.resolve().is_relative_to(base.resolve()):
            raise DatasetError(f"{where(img_lines, i)}: file_name {im['file_name']!r} leaves the images folder")
        if not p.is_file():
            raise DatasetError(f"{where(img_lines, i)}: image {p} is missing")
        w, h, blob = _image_size(p)
        images[int(im["id"])] = {"w": w, "h": h, "data": blob, "boxes": [], "labels": [], "name": im["file_name"]}
    for i, a in enumerate(anns):
        loc = where(ann_lines, i)
        if not isinstance(a, dict) or "image_id" not in a or "bbox" not in a or "category_id" not in a:
            raise DatasetError(f"{loc}: an annotation needs image_id, category_id and bbox")
        im = images.get(int(a["image_id"]))
        if im is None:
            raise DatasetError(f"{loc}: image_id {a['image_id']} is not in 'images'")
        if int(a["category_id"]) not in cats:
            raise DatasetError(f"{loc}: unknown category_id {a['category_id']}")
        bb = a["bbox"]
        if not (isinstance(bb, list) and len(bb) == 4 and all(isinstance(v, (int, float)) for v in bb)):
            raise DatasetError(f"{loc}: bbox must be [x, y, width, height]")
        x, y, bw, bh = (float(v) for v in bb)
        im["boxes"].append(_clip_box((x, y, x + bw, y + bh), im["w"], im["h"], loc))
        im["labels"].append(cats[int(a["category_id"])])
    if not images:
        raise DatasetError(f"{json_path}: zero images")
    samples = [
        NewSample(im["data"], im["w"], im["h"], im["boxes"], im["labels"], source=str(im["name"]))
        for im in images.values()
    ]
    return classes, samples


def _yolo_classes(root: Path) -> list[str]:
    txt = root / "classes.txt"
    if txt.is_file():
        names = [ln.strip() for ln in txt.read_text().splitlines() if ln.strip()]
    else:
        yml = next((p for p in (root / "data.yaml", root / "dataset.yaml") if p.is_file()), None)
        if yml is None:
            raise DatasetError(f"{root}: no classes.txt or data.yaml naming the classes")
        d = yaml.safe_load(yml.read_text()) or {}
        raw = d.get("names")
        if isinstance(raw, dict):
            names = [str(raw[k]) for k in sorted(raw, key=int)]
        elif isinstance(raw, list):
            names = [str(n) for n in raw]
        else:
            raise DatasetError(f"{yml}: 'names' must be a list or a mapping of index to name")
    if not names:
        raise DatasetError(f"{root}: the class list is empty")
    return names


def load_yolo(root: Path) -> tuple[list[str], list[NewSample]]:
    root = Path(root)
    classes = _yolo_classes(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise DatasetError(f"{root}: no images/ folder")
    images = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    labels = {p.relative_to(lab_dir).with_suffix(""): p for p in lab_dir.rglob("*.txt")} if lab_dir.is_dir() else {}
    stems = {p.relative_to(img_dir).with_suffix("") for p in images}
    for stem, lp in labels.items():
        if stem not in stems:
            raise DatasetError(f"{lp}: label file has no image {img_dir / stem}.jpg|png (missing image)")
    samples = []
    for p in images:
        w, h, blob = _image_size(p)
        boxes, labs = [], []
        label_file = labels.get(p.relative_to(img_dir).with_suffix(""))
        if label_file is not None:
            for n, line in enumerate(label_file.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                loc = f"{label_file}:{n}"
                try:
                    cls, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:5])
                except (ValueError, IndexError):
                    raise DatasetError(f"{loc}: expected 'class cx cy w h', got {line.strip()!r}") from None
                if len(parts) != 5:
                    raise DatasetError(f"{loc}: expected 5 fields, got {len(parts)}")
                if not 0 <= cls < len(classes):
                    raise DatasetError(f"{loc}: unknown class {cls} (classes 0..{len(classes) - 1})")
                box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                boxes.append(_clip_box(box, w, h, loc))
                labs.append(cls)
        samples.append(NewSample(blob, w, h, boxes, labs, source=str(p.relative_to(root))))  # type: ignore[arg-type]
    if not samples:
        raise DatasetError(f"{img_dir}: zero images")
    return classes, samples


@dataclass
class LabelledImage:
    """One image and its boxes (x1, y1, x2, y2 in pixels) as written to a COCO or YOLO folder."""

    image_id: int
    file_name: str
    data: bytes
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]]
    labels: list[int]  # index into the class list
    scores: list[float] | None = None  # pre-annotations carry the model's confidence


def write_coco(out: Path, items: Iterable[LabelledImage], classes: list[str], decimals: int | None = 2) -> Path:
    """`out/images/<file_name>` and `out/annotations.json` (bbox = [x, y, w, h], category ids from 1).
    `decimals=None` keeps boxes exact (labels that must come back unchanged)."""

    def r(v: float) -> float:
        return v if decimals is None else round(v, decimals)

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for it in items:
        (out / "images" / it.file_name).write_bytes(it.data)
        images.append({"id": it.image_id, "file_name": it.file_name, "width": it.width, "height": it.height})
        for k, (b, lab) in enumerate(zip(it.boxes, it.labels, strict=True)):
            bw, bh = b[2] - b[0], b[3] - b[1]
            ann = {
                "id": len(anns) + 1,
                "image_id": it.image_id,
                "category_id": lab + 1,
                "bbox": [r(b[0]), r(b[1]), r(bw), r(bh)],
                "area": r(bw * bh),
                "iscrowd": 0,
            }
            if it.scores is not None:
                ann["score"] = it.scores[k]
            anns.append(ann)
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    path = out / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}, indent=1))
    return path


def write_yolo(out: Path, items: Iterable[LabelledImage], classes: list[str]) -> Path:
    """`out/images/<file_name>`, `out/labels/<stem>.txt` (class cx cy w h, normalised) and `out/classes.txt`."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for it in items:
        (out / "images" / it.file_name).write_bytes(it.data)
        w, h = it.width, it.height
        lines = [
            f"{lab} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
            f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
            for b, lab in zip(it.boxes, it.labels, strict=True)
        ]
        (out / "labels" / f"{Path(it.file_name).stem}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    return out


def _dataset_items(dv: DatasetVersion, split: str | None) -> Iterator[LabelledImage]:
    for i, s in enumerate(x for x in dv.samples if split is None or x.split == split):
        data = dv.image_path(s).read_bytes()
        yield LabelledImage(i + 1, f"{s.sha256[:16]}{s.ext}", data, s.width, s.height, list(s.boxes), list(s.labels))


def export_coco(dv: DatasetVersion, out: Path, split: str | None = None) -> Path:
    return write_coco(out, _dataset_items(dv, split), list(dv.classes))


def export_yolo(dv: DatasetVersion, out: Path, split: str | None = None) -> Path:
    write_yolo(out, _dataset_items(dv, split), list(dv.classes))
    return Path(out)


def coco_labels(doc: Any) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """Labels only, no images: file_name -> [(class name, (x1, y1, x2, y2))] from a COCO document.
    Used to take labels back for images that live elsewhere (exported hard samples)."""
    try:
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        images = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        anns = list(doc.get("annotations", []))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"not a COCO annotations document: {exc}") from None
    out: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = {name: [] for name in images.values()}
    for k, a in enumerate(anns):
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            out[images[int(a["image_id"])]].append((cats[int(a["category_id"])], (x, y, x + w, y + h)))
        except (KeyError, ValueError, TypeError):
            raise DatasetError(f"annotations[{k}]: needs a known image_id, category_id and bbox") from None
    return out
