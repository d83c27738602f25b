#!/usr/bin/env python3
"""Build the example models with the onnx helper API (no framework, no download).

``tinycnn.onnx``: a small CNN shaped like a vision backbone: input ``input`` float32
[1, 3, 64, 64] -> Conv 3x3 (16) + Relu -> MaxPool 2x2 -> Conv 3x3 (32) + Relu ->
GlobalAveragePool -> Flatten -> Gemm (10) -> Softmax. ``tinycnn_dynamic.onnx`` is the same
network with input shape [batch, 3, height, width]. Weights come from a seeded RNG, so running
this script again writes identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def build(dynamic: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        data = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return numpy_helper.from_array(data, name)

    dims = ["batch", 3, "height", "width"] if dynamic else [1, 3, 64, 64]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch" if dynamic else 1, 10])]
    init = [
        weight("conv1_w", 16, 3, 3, 3), weight("conv1_b", 16),
        weight("conv2_w", 32, 16, 3, 3), weight("conv2_b", 32),
        weight("fc_w", 10, 32), weight("fc_b", 10),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(nodes, "tinycnn", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fleet-examples")
    model.ir_version = 8  # readable by ONNX Runtime releases back to 1.12 (JetPack 5 era)
    onnx.checker.check_model(model)
    return model


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, dynamic in (("tinycnn.onnx", False), ("tinycnn_dynamic.onnx", True)):
        path = here / name
        path.write_bytes(build(dynamic).SerializeToString())
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
