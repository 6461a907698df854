"""Immutable, content-addressed dataset versions.

Layout under a root folder:

    objects/ab/ab12…ef.jpg            image bytes, named by their sha256 (shared by every version)
    <name>/v<N>.json                  one version: classes, samples (sha256, size, boxes, labels, split)

A version file is written once (temp → fsync → rename) and never changed; its `id` is the sha256 of its
canonical content, so two versions with the same samples and labels have the same id.

With object storage (a `remote`, model_zoo/objects.py) the bucket holds the same layout
under `datasets/`, and the local folder is a read-through cache: a version made on one host (a server
replica, a Ray node) is uploaded, images first and its version file last, and any other host lists, loads
and fetches it from there. The train/val
split of a sample is a function of its image hash alone: a sample keeps its split in every later version,
so a holdout never leaks into training as the dataset grows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from model_zoo.datasets.synthetic_scenes import preset, render_scene
from model_zoo.objects import Remote

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """A dataset cannot be read or written; str() names the file (and line) and what is wrong."""


def split_of(sha256: str, val_fraction: float) -> str:
    return "val" if int(sha256[:8], 16) / 0x1_0000_0000 < val_fraction else "train"


def image_ext(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    raise DatasetError("image is neither JPEG nor PNG")


@dataclass(frozen=True)
class Sample:
    sha256: str
    ext: str
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]  # xyxy pixels; empty for classification
    labels: tuple[int, ...]  # one per box (detection) or exactly one (classification)
    split: str = "train"
    source: str = ""  # where it came from: original file name, device id, generator seed

    def to_json(self) -> dict:
        return {
            "sha256": self.sha256,
            "ext": self.ext,
            "width": self.width,
            "height": self.height,
            "boxes": [[round(v, 2) for v in b] for b in self.boxes],
            "labels": list(self.labels),
            "split": self.split,
            "source": self.source,
        }

    @staticmethod
    def from_json(d: dict) -> Sample:
        return Sample(
            d["sha256"],
            d["ext"],
            int(d["width"]),
            int(d["height"]),
            tuple(tuple(float(v) for v in b) for b in d["boxes"]),  # type: ignore[misc]
            tuple(int(v) for v in d["labels"]),
            d["split"],
            d.get("source", ""),
        )


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    task: str  # detect | classify
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]
    val_fraction: float
    parent: str | None = None  # "name:version" this one was derived from
    note: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    root: Path | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def id(self) -> str:
        """sha256 of what training sees: images, labels, splits, classes (not where samples came from)."""
        samples = [{k: v for k, v in s.to_json().items() if k != "source"} for s in self.samples]
        body = json.dumps(
            {"task": self.task, "classes": self.classes, "samples": samples},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(body.encode()).hexdigest()

    def split(self, which: str) -> list[Sample]:
        return [s for s in self.samples if s.split == which]

    def image_path(self, s: Sample) -> Path:
        assert self.root is not None
        return object_path(self.root, s.sha256, s.ext)

    def load_image(self, s: Sample) -> np.ndarray:

        img = cv2.imread(str(self.image_path(s)), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{self.image_path(s)}: image missing or unreadable")
        return img

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"train": {c: 0 for c in self.classes}, "val": {c: 0 for c in self.classes}}
        for s in self.samples:
            for lab in s.labels:
                out[s.split][self.classes[lab]] += 1
        return out

    def summary(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "id": self.id,
            "task": self.task,
            "classes": list(self.classes),
            "samples": len(self.samples),
            "train": len(self.split("train")),
            "val": len(self.split("val")),
            "objects": self.counts(),
            "parent": self.parent,
            "note": self.note,
            "created_at": self.created_at,
        }


def object_path(root: Path, sha: str, ext: str) -> Path:
    return root / "objects" / sha[:2] / f"{sha}{ext}"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def put_image(root: Path, data: bytes) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    ext = image_ext(data)
    p = object_path(root, sha, ext)
    if not p.exists():
        _write_atomic(p, data)
    return sha, ext


@dataclass
class NewSample:
    """A sample before it is stored: image bytes plus labels."""

    data: bytes
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]]
    labels: list[int]
    source: str = ""


def _version_of(fname: str) -> int | None:
    stem = fname.rsplit("/", 1)[-1].removesuffix(".json")
    return int(stem[1:]) if stem.startswith("v") and stem[1:].isdigit() and fname.endswith(".json") else None


class DatasetStore:
    def __init__(self, root: Path, remote: Remote | None = None, key_prefix: str = "datasets/") -> None:
        self.root = Path(root)
        self.remote, self.key_prefix = remote, key_prefix

    def _rkey(self, path: Path) -> str:
        return self.key_prefix + path.relative_to(self.root).as_posix()

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        found = {int(p.stem[1:]) for p in d.glob("v*.json") if p.stem[1:].isdigit()} if d.is_dir() else set()
        if self.remote is not None and NAME.match(name):
            found |= {v for k in self.remote.list(f"{self.key_prefix}{name}/") if (v := _version_of(k)) is not None}
        return sorted(found)

    def names(self) -> list[str]:
        local = {p.name for p in self.root.iterdir() if p.is_dir()} if self.root.is_dir() else set()
        if self.remote is not None:
            local |= {k[len(self.key_prefix) :].rstrip("/") for k in self.remote.list(self.key_prefix, "/")}
        return sorted(n for n in local if n != "objects" and NAME.match(n) and self.versions(n))

    def load(self, name: str, version: int | None = None) -> DatasetVersion:
        vs = self.versions(name) if version is None or not NAME.match(name) else [version]
        if not vs:
            raise DatasetError(f"no dataset named {name!r}")
        v = vs[-1]
        path = self.root / name / f"v{v}.json"
        if not path.is_file() and self.remote is not None and NAME.match(name):
            self.remote.fetch(self._rkey(path), path)
        if not path.is_file():
            where = f" in object storage ({self.remote.describe()})" if self.remote is not None else ""
            have = self.versions(name)
            raise DatasetError(
                f"no dataset version {name}:{v}{where}"
                + (f" (have {', '.join(map(str, have))})" if have else f": no dataset named {name!r}")
            )
        d = json.loads(path.read_text())
        return DatasetVersion(
            name=d["name"],
            version=d["version"],
            task=d["task"],
            classes=tuple(d["classes"]),
            samples=tuple(Sample.from_json(s) for s in d["samples"]),
            val_fraction=d["val_fraction"],
            parent=d.get("parent"),
            note=d.get("note", ""),
            created_at=d["created_at"],
            root=self.root,
        )

    def create(
        self,
        name: str,
        task: str,
        classes: Iterable[str],
        samples: Iterable[NewSample],
        val_fraction: float = 0.2,
        parent: DatasetVersion | None = None,
        note: str = "",
    ) -> DatasetVersion:
        """Store a new version: the parent's samples (if any) plus `samples`. Validates everything first."""
        if not NAME.match(name):
            raise DatasetError(f"dataset name {name!r}: use 1-64 of a-z 0-9 _ . - starting with a letter or digit")
        if task not in ("detect", "classify"):
            raise DatasetError(f"task must be detect or classify, got {task!r}")
        classes = tuple(classes)
        if not classes or len(set(classes)) != len(classes):
            raise DatasetError("classes must be a non-empty list of distinct names")
        if parent is not None and parent.classes != classes[: len(parent.classes)]:
            raise DatasetError(f"classes {classes} do not extend the parent's {parent.classes}")
        new = list(samples)
        for i, s in enumerate(new):
            where = s.source or f"sample {i}"
            if len(s.boxes) != len(s.labels) and task == "detect":
                raise DatasetError(f"{where}: {len(s.boxes)} boxes but {len(s.labels)} labels")
            if task == "classify" and len(s.labels) != 1:
                raise DatasetError(f"{where}: a classification sample needs exactly one label")
            for lab in s.labels:
                if not 0 <= lab < len(classes):
                    raise DatasetError(f"{where}: class index {lab} outside 0..{len(classes) - 1}")
            for b in s.boxes:
                x1, y1, x2, y2 = b
                if not (0 <= x1 < x2 <= s.width and 0 <= y1 < y2 <= s.height):
                    raise DatasetError(f"{where}: box {list(b)} is outside the {s.width}x{s.height} image")
            image_ext(s.data)
        stored: dict[str, Sample] = {}
        if parent is not None:
            stored.update({s.sha256: s for s in parent.samples})
        added: list[Path] = []  # this version's new images (the parent's are in the bucket already)
        for s in new:
            sha, ext = put_image(self.root, s.data)
            added.append(object_path(self.root, sha, ext))
            stored[sha] = Sample(
                sha,
                ext,
                s.width,
                s.height,
                tuple(tuple(float(v) for v in b) for b in s.boxes),  # type: ignore[misc]
                tuple(int(v) for v in s.labels),
                split_of(sha, val_fraction),
                s.source,
            )
        if not stored:
            raise DatasetError("the dataset has zero samples")
        version = (self.versions(name) or [0])[-1] + 1
        dv = DatasetVersion(
            name=name,
            version=version,
            task=task,
            classes=classes,
            samples=tuple(sorted(stored.values(), key=lambda s: s.sha256)),
            val_fraction=val_fraction,
            parent=parent.ref if parent else None,
            note=note,
            root=self.root,
        )
        body = {
            "name": name,
            "version": version,
            "id": dv.id,
            "task": task,
            "classes": list(classes),
            "val_fraction": val_fraction,
            "parent": dv.parent,
            "note": note,
            "created_at": dv.created_at,
            "samples": [s.to_json() for s in dv.samples],
        }
        path = self.root / name / f"v{version}.json"
        if path.exists():
            raise DatasetError(f"dataset version {name}:{version} was created concurrently; try again")
        data = json.dumps(body, indent=1).encode()
        if self.remote is not None:  # the bucket first (images, then the version file): it is the source of truth
            remote = self.remote
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda p: remote.put_file(self._rkey(p), p), sorted(set(added))))
            tmp = path.with_name(f".{path.name}.{os.getpid()}.up")
            _write_atomic(tmp, data)
            try:
                remote.put_file(self._rkey(path), tmp)
            finally:
                tmp.unlink(missing_ok=True)
        _write_atomic(path, data)
        return dv

    def materialize(self, dv: DatasetVersion, threads: int = 8) -> int:
        """Fetch the version's images this host lacks from object storage (before training, so a missing one
        fails the job at once, naming it); returns how many were fetched."""
        missing = [s for s in dv.samples if not dv.image_path(s).is_file()]
        if not missing:
            return 0
        remote = self.remote
        if remote is None:
            raise DatasetError(f"{dv.ref}: {len(missing)} image(s) missing from {self.root / 'objects'}, "
                               f"e.g. {missing[0].sha256}{missing[0].ext}")  # fmt: skip
        with ThreadPoolExecutor(threads) as pool:
            got = list(pool.map(lambda s: remote.fetch(self._rkey(dv.image_path(s)), dv.image_path(s)), missing))
        lost = [s for s, ok in zip(missing, got, strict=True) if not ok]
        if lost:
            raise DatasetError(
                f"{dv.ref}: {len(lost)} image(s) are in neither {self.root / 'objects'} nor object storage "
                f"({remote.describe()}), e.g. {self._rkey(dv.image_path(lost[0]))}"
            )
        return len(missing)


def encode_image(img: np.ndarray, ext: str = ".png") -> bytes:

    ok, buf = cv2.imencode(ext, img, [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else [])
    if not ok:
        raise DatasetError(f"cannot encode image as {ext}")
    return buf.tobytes()


def synthesize(
    store: DatasetStore,
    name: str,
    preset_name: str,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 256),
    val_fraction: float = 0.2,
    classes: tuple[str, ...] | None = None,
    parent: DatasetVersion | None = None,
    task: str = "detect",
) -> DatasetVersion:
    """A dataset version of `count` synthetic scenes with exact boxes (detect), or of one large shape per
    image labelled with its class (classify)."""

    overrides: dict = {"classes": classes} if classes else {}
    if task == "classify":
        overrides.update(objects=(1, 1), scale=(0.45, 0.8), occlusion=0.0, min_visible=0.0)
    cfg = preset(preset_name, **overrides)
    samples = []
    for i in range(count):
        sc = render_scene(cfg, seed, i, size)
        if task == "classify" and len(sc.labels) != 1:
            continue
        samples.append(
            NewSample(
                encode_image(sc.image, ".jpg"),
                size[0],
                size[1],
                [] if task == "classify" else [tuple(map(float, b)) for b in sc.boxes],  # type: ignore[misc]
                [int(v) for v in sc.labels],
                source=f"synthetic:{preset_name}:{seed}:{i}",
            )
        )
    return store.create(
        name, task, cfg.classes, samples, val_fraction, parent, note=f"synthetic {preset_name} x{count} seed {seed}"
    )
