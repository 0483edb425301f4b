"""MAC counting for the INT8 coverage figure: every compute node counts in the total, the
ones no Q/DQ region holds (a recurrent layer, a product of two activations) included."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtbuild.quant.qdq import plan
from trtbuild.quant.regions import count_macs, regions


def lstm_encoder() -> onnx.ModelProto:
    """x (batch 1, seq 5, 4) -> LSTM (hidden 8) -> Linear (8 -> 3); plus the scores of the
    LSTM states against each other (a MatMul between two activations)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (1, 32, 4)).astype(np.float32)
    r = rng.normal(0, 0.3, (1, 32, 8)).astype(np.float32)
    lin = rng.normal(0, 0.3, (8, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xs"], perm=[1, 0, 2], name="to_seq"),
             helper.make_node("LSTM", ["xs", "W", "R"], ["y"], hidden_size=8, name="lstm"),
             helper.make_node("Squeeze", ["y", "one"], ["ys"], name="squeeze"),  # (5, 1, 8)
             helper.make_node("Transpose", ["ys"], ["h"], perm=[1, 0, 2], name="to_batch"),
             helper.make_node("MatMul", ["h", "lin"], ["lo"], name="linear"),   # (1, 5, 3)
             helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1], name="t"),
             helper.make_node("MatMul", ["h", "ht"], ["so"], name="scores"),  # (1, 5, 5)
             helper.make_node("Mul", ["lo", "lo"], ["out"]),  # a head feeding an output
             helper.make_node("Mul", ["so", "so"], ["scores"])]  # stays float: not these
    g = helper.make_graph(
        nodes, "lstm_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for a, n in
         ((w, "W"), (r, "R"), (lin, "lin"), (np.array([1], np.int64), "one"))])
    return onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_recurrent_and_activation_products_count_in_the_total():
    model = lstm_encoder()
    found = regions(model, plan(model))
    x = np.random.default_rng(1).normal(0, 1, (1, 5, 4)).astype(np.float32)
    total = count_macs(model, {"x": x}, found)
    lstm = 5 * 1 * 1 * 32 * (4 + 8)   # seq x batch x dirs x 4H x (input + hidden)
    linear = 5 * 1 * 3 * 8
    scores = 5 * 5 * 8
    assert total == lstm + linear + scores
    by_node = {r.node: r.macs for r in found}
    assert by_node == {"linear": linear, "scores": scores}  # no Q/DQ plan for the LSTM
    # the INT8 share: 320 of 2240 MACs, was 100% when only regions were counted
    assert sum(by_node.values()) / total < 0.15
