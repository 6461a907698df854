"""Decoders and preprocessing: wrong boxes or labels here are wrong answers on every device."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.decoders.classify import decode_classify
from edge_agent.decoders.results import Detections
from edge_agent.decoders.yolov8 import decode_yolov8, nms
from edge_agent.preprocess import Preprocessor, Transform
from edge_agent.protocol.manifest import InputSpec

IDENTITY = Transform(1.0, 1.0, 0.0, 0.0, 640, 640)


def yolo_output(rows: list[tuple[float, float, float, float, int, float]], num_classes: int, n: int = 50) -> np.ndarray:
    """Build a (1, 4 + C, N) tensor; unspecified anchors have zero scores."""
    out = np.zeros((1, 4 + num_classes, n), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + cls, i] = score
    return out


def test_empty_output_gives_no_detections() -> None:
    det = decode_yolov8([yolo_output([], 2)], 2, IDENTITY, 0.25, 0.45, 100)
    assert len(det) == 0 and det.xyxy.shape == (0, 4)


def test_yolov8_boxes_scores_and_per_class_nms() -> None:
    rows = [
        (100, 100, 40, 40, 0, 0.9),  # kept
        (102, 101, 40, 40, 0, 0.8),  # same class, overlaps the first: suppressed
        (101, 100, 40, 40, 1, 0.7),  # other class at the same place: kept
        (300, 300, 20, 60, 1, 0.6),  # kept
        (500, 500, 10, 10, 0, 0.1),  # below threshold
    ]
    det = decode_yolov8([yolo_output(rows, 2)], 2, IDENTITY, 0.25, 0.45, 100)
    assert det.class_ids.tolist() == [0, 1, 1]
    np.testing.assert_allclose(det.scores, [0.9, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(det.xyxy[0], [80, 80, 120, 120])
    np.testing.assert_allclose(det.xyxy[2], [290, 270, 310, 330])


def test_yolov8_maps_letterboxed_boxes_back_to_the_frame() -> None:
    # a 1280x720 frame letterboxed into 640x640: scale 0.5, 140 px of padding on top
    tf = Transform(0.5, 0.5, 0.0, 140.0, 1280, 720)
    det = decode_yolov8([yolo_output([(320, 320, 100, 50, 0, 0.9)], 1)], 1, tf, 0.25, 0.45, 100)
    np.testing.assert_allclose(det.xyxy[0], [540, 310, 740, 410])


def test_yolov8_wrong_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(1, 6, N\)"):
        decode_yolov8([np.zeros((1, 84, 10), np.float32)], 2, IDENTITY, 0.25, 0.45, 100)


def test_nms_max_keep_and_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]], np.float32)
    keep = nms(boxes, np.array([0.2, 0.9, 0.5], np.float32), 0.5, 2)
    assert keep.tolist() == [1, 2]


@pytest.mark.parametrize("logits, top", [([2.0, 0.5, -1.0], 0), ([0.1, 0.2, 0.7], 2)])
def test_classify_softmax_or_probabilities(logits: list[float], top: int) -> None:
    c = decode_classify([np.array([logits], np.float32)], 3)
    assert c.top1 == top
    assert abs(float(c.scores.sum()) - 1.0) < 1e-5
    if abs(sum(logits) - 1.0) < 1e-6:  # already probabilities: unchanged
        np.testing.assert_allclose(c.scores, logits, rtol=1e-6)


def test_classify_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        decode_classify([np.zeros((1, 5), np.float32)], 3)


def test_detections_validate_shapes() -> None:
    with pytest.raises(ValueError, match=r"xyxy must have shape \(2, 4\)"):
        Detections(np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64))


def test_preprocess_stretch_normalises_into_one_buffer() -> None:
    spec = InputSpec(shape=(1, 3, 32, 48), color="RGB", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pre = Preprocessor(spec)
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[..., 2] = 255  # pure red in BGR
    x, tf = pre(frame)
    assert x.shape == (1, 3, 32, 48) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)  # R channel first, (1 - .5) / .5
    np.testing.assert_allclose(x[0, 2], -1.0)
    x2, _ = pre(frame)
    assert x2 is x  # preallocated: no per-frame allocation of the input
    assert (tf.scale_x, tf.scale_y) == (48 / 160, 32 / 120)


def test_preprocess_letterbox_pads_and_maps_back() -> None:
    spec = InputSpec(shape=(1, 3, 64, 64), resize="letterbox")
    pre = Preprocessor(spec)
    frame = np.full((50, 100, 3), 200, np.uint8)
    x, tf = pre(frame)
    assert (tf.pad_x, tf.pad_y, tf.scale_x) == (0.0, 16.0, 0.64)
    assert np.isclose(x[0, 0, 0, 0], 114 / 255) and np.isclose(x[0, 0, 32, 32], 200 / 255)
    back = tf.to_frame(np.array([[0, 16, 64, 48]], np.float32))
    np.testing.assert_allclose(back[0], [0, 0, 100, 50])


def test_preprocess_rejects_non_bgr_frames() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Preprocessor(InputSpec(shape=(1, 3, 8, 8)))(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_fused_kernel_matches_numpy(resize: str, color: str) -> None:
    """The numba kernel is chosen when it measures faster; it must give the same input tensor."""
    from edge_agent import kernels

    assert kernels.numba_available(), "numba is part of edgeloop[agent]; the fused kernel must compile"
    spec = InputSpec(
        shape=(1, 3, 96, 128), resize=resize, color=color, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    frame = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    fused, _ = Preprocessor(spec, kernel="numba")(frame)
    plain, _ = Preprocessor(spec, kernel="numpy")(frame)
    np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_nms_matches_numpy(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The numba NMS must keep exactly the boxes the plain version keeps, in the same order."""
    from edge_agent import kernels

    assert kernels.numba_available(), "numba is part of edgeloop[agent]; the compiled NMS must be there"
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (400, 2)).astype(np.float32)
    wh = rng.uniform(5, 120, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, 400).astype(np.float32)
    fast = nms(boxes, scores, 0.45, 100)
    monkeypatch.setattr(kernels, "greedy_nms", lambda *a: None)
    plain = nms(boxes, scores, 0.45, 100)
    assert fast.tolist() == plain.tolist()
