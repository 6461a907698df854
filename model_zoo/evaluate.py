"""Accuracy the way the device sees it: an ONNX artifact run through the agent's own runtime, preprocessing
and decoder, scored with COCO mAP (faster-coco-eval, a maintained COCOeval) or top-1.

Detection is scored at a confidence floor of 0.001 and up to 100 boxes per image (the COCO protocol); the
boxes come from the agent's yolov8 decoder and NMS, mapped back to frame pixels by its letterbox transform.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.decoders.base import decoder_for
from edge_agent.preprocess import Preprocessor
from edge_agent.protocol.manifest import DecoderSpec
from edge_agent.runtimes import RuntimeOptions, create_runtime
from model_zoo.datasets.store import DatasetVersion, Sample

log = logging.getLogger(__name__)
EVAL_CONF = 0.001


def coco_map(
    samples: list[Sample], predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int
) -> dict[str, float]:
    """predictions[i] = (xyxy (K,4), scores (K,), class ids (K,)) for samples[i]."""
    from faster_coco_eval import COCO, COCOeval_faster

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for i, (s, (boxes, scores, cls)) in enumerate(zip(samples, predictions, strict=True)):
        images.append({"id": i + 1, "width": s.width, "height": s.height, "file_name": s.sha256})
        for b, lab in zip(s.boxes, s.labels, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": lab + 1,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, sc, c in zip(boxes, scores, cls, strict=True):
            xyxy = [float(v) for v in b]
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [xyxy[0], xyxy[1], xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]],
                    "score": float(sc),
                }
            )
    if not anns:
        raise ValueError("no ground-truth boxes to score against")
    if not dets:
        return {"mAP50": 0.0, "mAP50_95": 0.0}
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
    }
    gt.createIndex()
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP50": round(float(ev.stats[1]), 4), "mAP50_95": round(float(ev.stats[0]), 4)}


def top1(samples: list[Sample], predicted: list[int]) -> dict[str, float]:
    if not samples:
        raise ValueError("no samples to score")
    hits = sum(int(p == s.labels[0]) for s, p in zip(samples, predicted, strict=True))
    return {"top1": round(hits / len(samples), 4)}


def evaluate_onnx(
    path: Path,
    dv: DatasetVersion,
    task: str,
    input_spec,  # edge_agent.protocol.manifest.InputSpec
    split: str = "val",
    threads: int = 0,
    limit: int | None = None,
) -> dict[str, float]:

    samples = dv.split(split)[:limit] if limit else dv.split(split)
    if not samples:
        raise ValueError(f"{dv.ref} has no {split} samples")
    rt = create_runtime("onnxruntime", Path(path), RuntimeOptions(intra_threads=threads))
    pre = Preprocessor(input_spec, kernel="numpy")
    spec = (
        DecoderSpec(type="yolov8", conf_threshold=EVAL_CONF, max_detections=100)
        if task == "detect"
        else DecoderSpec(type="classify")
    )
    decode = decoder_for(spec, len(dv.classes))
    preds: list = []
    t0 = time.perf_counter()
    try:
        for s in samples:
            x, tf = pre(dv.load_image(s))
            res = decode(rt.run(x), tf)
            if task == "detect":
                preds.append((res.xyxy, res.scores, res.class_ids))  # type: ignore[union-attr]
            else:
                preds.append(int(np.argmax(res.scores)))
    finally:
        rt.close()
    log.debug("evaluated %s on %d images in %.1fs", path, len(samples), time.perf_counter() - t0)
    if task == "detect":
        return coco_map(samples, preds, len(dv.classes))
    return top1(samples, preds)
