"""A small convolutional classifier written as an ONNX graph (random weights, no torch): a stand-in with
the cost profile of a light edge model (a few ms per 224x224 frame on one CPU core) for benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def build_tiny_cnn(
    path: Path, size: int = 224, num_classes: int = 10, widths: tuple[int, ...] = (12, 24, 48, 96), seed: int = 0
) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "images", 3

    def conv(name: str, x: str, cin: int, cout: int, stride: int) -> str:
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits.extend(
            [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")]
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [f"{name}_c"],
                kernel_shape=[3, 3],
                strides=[stride, stride],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        return f"{name}_r"

    for i, cout in enumerate(widths):
        prev = conv(f"s{i}a", prev, cin, cout, 2)
        prev = conv(f"s{i}b", prev, cout, cout, 1)
        cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["feat"]))
    fc = (rng.standard_normal((num_classes, cin)) / np.sqrt(cin)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc_w"), numpy_helper.from_array(np.zeros(num_classes, np.float32), "fc_b")]
    nodes.append(helper.make_node("Gemm", ["feat", "fc_w", "fc_b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="edgeloop")
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
