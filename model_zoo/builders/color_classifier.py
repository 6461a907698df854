"""A colour classifier written as an ONNX graph: mean colour -> linear -> softmax.

It really classifies: on the synthetic colour scenes (`model_zoo.datasets.synthetic_video`) its top-1
is the scene's dominant colour. `sharpness` changes the weights, so two versions differ in bytes and
confidence but agree on labels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

CLASSES = ("red", "green", "blue")


def build_color_classifier(path: Path, size: int = 64, sharpness: float = 12.0, batch: int | str = 1) -> Path:
    """Mean colour -> softmax over red/green/blue. `batch`: a fixed batch size, or a name for a dynamic axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (sharpness * (np.eye(3) - 1.0 / 3.0)).astype(np.float32)  # logits = k * (c - mean(c))
    b = np.zeros(3, dtype=np.float32)
    axes = np.array([2, 3], dtype=np.int64)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "color_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 3])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(axes, "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="edgeloop")
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_slow_color_classifier(
    path: Path, size: int = 64, work: int = 512, repeats: int = 30, min_ms: float | None = 120.0
) -> Path:
    """The same classifier plus a heavy branch whose result is multiplied by zero: same answers, far
    slower (for health-window tests: a model that is right but too slow for the camera). With `min_ms`
    the branch is lengthened until one inference on this machine takes at least that long (a fast CPU,
    AVX-512 say, would otherwise keep up with the camera)."""
    _build_slow(path, size, work, repeats)
    if min_ms is None:
        return path
    for _ in range(4):
        took = _latency_ms(path)
        if took >= min_ms:
            break
        repeats = min(4000, int(repeats * min_ms / max(took, 0.5) * 1.3) + 1)
        _build_slow(path, size, work, repeats)
    return path


def _latency_ms(path: Path) -> float:

    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.zeros([d if isinstance(d, int) else 1 for d in inp.shape], np.float32)
    sess.run(None, {inp.name: x})
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[1]


def _build_slow(path: Path, size: int, work: int, repeats: int) -> None:
    import onnx
    from onnx import helper, numpy_helper

    build_color_classifier(path, size=size)
    model = onnx.load(str(path))
    g = model.graph
    rng = np.random.default_rng(0)
    g.initializer.extend(
        [
            numpy_helper.from_array((rng.standard_normal((work, work)) / np.sqrt(work)).astype(np.float32), "Wheavy"),
            numpy_helper.from_array(np.array([work, work], dtype=np.int64), "heavy_shape"),
            numpy_helper.from_array(np.zeros((1, 3), np.float32), "zero3"),
            numpy_helper.from_array(np.array([0, 1], dtype=np.int64), "axes01"),
        ]
    )
    nodes = [
        helper.make_node("ReduceMean", ["mean", "axes01"], ["m0"], keepdims=1),  # depends on the input
        helper.make_node("Expand", ["m0", "heavy_shape"], ["t0"]),
    ]
    prev = "t0"
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [prev, "Wheavy"], [f"t{i + 1}"]))
        prev = f"t{i + 1}"
    nodes += [
        helper.make_node("ReduceMean", [prev, "axes01"], ["r"], keepdims=1),
        helper.make_node("Mul", ["r", "zero3"], ["extra"]),
        helper.make_node("Add", ["logits", "extra"], ["logits_slow"]),
    ]
    softmax = next(n for n in g.node if n.op_type == "Softmax")
    softmax.input[0] = "logits_slow"
    idx = list(g.node).index(softmax)
    for k, n in enumerate(nodes):
        g.node.insert(idx + k, n)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
