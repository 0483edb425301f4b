"""BatchNormalization folded into the Conv before it (the FP16 stage's range check runs on
the folded model: TensorRT folds these too, so FP16 never sees the unfolded values)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..onnx import io


def fold_batchnorm(model: Any) -> tuple[Any, int]:
    """A copy with every BatchNormalization that follows a Conv or (group 1) ConvTranspose
    with constant weights, whose output nothing else reads, folded into its weights and
    bias; `model` itself when it has no BatchNormalization (a transformer: no second copy
    of its weights)."""
    import onnx
    from onnx import numpy_helper

    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return model, 0
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in g.output} | io.subgraph_reads(g)
    folded, drop = 0, []
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        params = [inits.get(t) for t in bn.input[1:5]]
        group = next((a.i for a in conv.attribute if a.name == "group"), 1) if conv else 1
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or None in params or \
                (conv.op_type == "ConvTranspose" and group != 1) or \
                readers.get(bn.input[0], 0) != 1 or bn.input[0] in outputs or \
                conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2]
                                               and conv.input[2] not in inits):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        axis = 1 if conv.op_type == "ConvTranspose" else 0  # the output-channel axis of W
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) \
            if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[axis])
        shape = [1] * w.ndim
        shape[axis] = -1
        w_name, b_name = f"{bn.output[0]}_folded_w", f"{bn.output[0]}_folded_b"
        g.initializer.extend([
            numpy_helper.from_array((w * scale.reshape(shape)).astype(np.float32), w_name),
            numpy_helper.from_array(((b - mean) * scale + beta).astype(np.float32), b_name)])
        x = conv.input[0]
        del conv.input[:]
        conv.input.extend([x, w_name, b_name])
        conv.output[0] = bn.output[0]
        drop.append(bn)
        folded += 1
    for bn in drop:
        g.node.remove(bn)
    io.drop_unused_initializers(g)
    return m, folded
