"""Removal of nodes that compute the identity at inference time."""

from __future__ import annotations

from typing import Any

import numpy as np

SHAPE_OPS = ("Reshape", "Expand", "Squeeze", "Unsqueeze", "Flatten")


def remove_noops(graph: Any) -> Any:
    """Bypass Identity, Dropout (inference), same-type Cast, identity Transpose, shape-keeping
    Reshape/Expand/Squeeze/Unsqueeze/Flatten; merge Reshape->Reshape and
    Transpose->Transpose chains.

    Guarantees: graph inputs and outputs keep their names (a producer takes an output over).
    """
    outputs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        if not node.outputs or not node.inputs:
            continue
        if _merge_chain(node, outputs):
            continue
        if _is_noop(node, outputs):
            _bypass(graph, node, outputs)
    return graph.cleanup(remove_unused_graph_inputs=False)


def _is_noop(node: Any, outputs: set[int]) -> bool:
    op, inp, out = node.op, node.inputs[0], node.outputs[0]
    if op == "Identity":
        return True
    if op == "Dropout":
        return all(not t.outputs and id(t) not in outputs for t in node.outputs[1:])
    if op == "Cast":
        return inp.dtype is not None and np.dtype(inp.dtype) == _np_dtype(node.attrs["to"])
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if op in SHAPE_OPS:
        return _same_shape(inp.shape, out.shape)
    return False


def _same_shape(a: Any, b: Any) -> bool:
    """Equal and fully known (ints, or the same named symbol, which means the same size)."""
    if a is None or b is None or len(a) != len(b):
        return False
    return all((isinstance(x, int) and x >= 0 or isinstance(x, str) and not x.startswith("unk"))
               and x == y for x, y in zip(a, b))


def _merge_chain(node: Any, outputs: set[int]) -> bool:
    """Reshape(Reshape(x)) -> Reshape(x); Transpose(Transpose(x)) -> one Transpose."""
    if node.op not in ("Reshape", "Transpose") or not node.inputs[0].inputs:
        return False
    mid = node.inputs[0]
    prev = mid.inputs[0]
    if prev.op != node.op or len(mid.outputs) != 1 or id(mid) in outputs:
        return False
    if node.op == "Reshape":
        values = getattr(node.inputs[1], "values", None)
        if values is None or np.any(np.asarray(values) == 0):  # 0 copies a dim of `mid`
            return False
    else:
        p1, p2 = prev.attrs.get("perm"), node.attrs.get("perm")
        if p1 is None or p2 is None:
            return False
        node.attrs["perm"] = [int(p1[i]) for i in p2]
    node.inputs[0] = prev.inputs[0]
    return True


def _bypass(graph: Any, node: Any, outputs: set[int]) -> None:
    inp, out = node.inputs[0], node.outputs[0]
    if id(out) in outputs:
        # keep the output name: the producer of `inp` writes `out` directly
        if not inp.inputs or id(inp) in outputs or len(inp.outputs) != 1:
            return
        producer = inp.inputs[0]
        idx = next(i for i, t in enumerate(producer.outputs) if t is inp)
        node.outputs.clear()
        node.inputs.clear()
        producer.outputs[idx] = out
        return
    for consumer in list(out.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is out:
                consumer.inputs[i] = inp
    node.outputs.clear()


def _np_dtype(to: int) -> np.dtype:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to))
