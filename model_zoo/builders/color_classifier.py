"""A colour classifier written as an ONNX graph: mean colour -> linear -> softmax.

It really classifies: on the synthetic colour scenes (`model_zoo.datasets.synthetic_video`) its top-1
is the scene's dominant colour. `sharpness` changes the weights, so two versions differ in bytes and
confidence but agree on labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("red", "green", "blue")


def build_color_classifier(path: Path, size: int = 64, sharpness: float = 12.0) -> Path:
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
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])],
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
