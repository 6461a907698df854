"""Decoder selection from the manifest's decoder spec."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge_agent.decoders.classify import decode_classify
from edge_agent.decoders.results import Classification, Detections
from edge_agent.decoders.yolov8 import decode_yolov8
from edge_agent.preprocess import Transform
from edge_agent.protocol.manifest import DecoderSpec

Result = Classification | Detections
Decoder = Callable[[list[np.ndarray], Transform], Result]


def decoder_for(spec: DecoderSpec, num_classes: int) -> Decoder:
    if spec.type == "classify":
        return lambda outputs, tf: decode_classify(outputs, num_classes)
    if spec.type == "yolov8":
        return lambda outputs, tf: decode_yolov8(
            outputs, num_classes, tf, spec.conf_threshold, spec.iou_threshold, spec.max_detections
        )
    raise ValueError(f"unknown decoder {spec.type!r}")
