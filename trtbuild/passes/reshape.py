"""Turn batch-dependent Reshape targets into constants.

Dynamic-batch exports compute Reshape targets at run time (Shape -> Gather -> Unsqueeze ->
Concat). When only the batch size is free, each target is found by running the model at
two batch sizes: entries that agree are constants, and a single entry that changes becomes
-1 (ONNX Reshape infers it). Folding then removes the shape arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROBE_BATCHES = (2, 3, 5)


def constant_batch_reshapes(graph: Any) -> Any:
    """Replace computed Reshape shape inputs with constants where that is exact for any batch.

    Precondition: only the first axis of graph inputs is symbolic. Guarantees: outputs
    identical for every batch size (a target is rewritten only when it is constant in all
    entries but at most one across three probe batches). Graph inputs/outputs unchanged.
    """
    import onnx_graphsurgeon as gs

    targets = [n for n in graph.nodes if n.op == "Reshape" and isinstance(n.inputs[1], gs.Variable)]
    if not targets or not _only_batch_dynamic(graph):
        return graph
    probes = _shape_values(graph, targets, PROBE_BATCHES)
    if probes is None:
        return graph
    for k, node in enumerate(targets):
        if node.attrs.get("allowzero", 0):
            continue
        const = _constant_target([p[k] for p in probes])
        if const is not None:
            node.inputs[1] = gs.Constant(f"{node.name or 'reshape'}_{k}_shape_const", const)
    return graph.cleanup(remove_unused_graph_inputs=False)


def _only_batch_dynamic(graph: Any) -> bool:
    return all(t.shape is not None and all(isinstance(d, int) for d in t.shape[1:])
               for t in graph.inputs)


def _constant_target(probes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """From (target, data shape) at each probe batch: a target valid at every batch, or None.

    An entry that varies becomes 0 (copy the input dim) when it always equals the input's dim
    there, else -1 when the target has no other -1.
    """
    targets = [t for t, _ in probes]
    first = targets[0]
    if first.ndim != 1 or any(t.shape != first.shape for t in targets):
        return None
    out = first.astype(np.int64).copy()
    for k in np.flatnonzero(np.any(np.stack(targets) != first, axis=0)):
        if all(k < len(d) and t[k] == d[k] for t, d in probes):
            out[k] = 0
        elif not np.any(out == -1):
            out[k] = -1
        else:
            return None
    return out


def _shape_values(graph: Any, nodes: list, batches: tuple[int, ...]) -> list | None:
    """Per batch size, the (target, data shape) of each Reshape when the model runs on
    random inputs of that batch; one session for all of them (building it serialises the
    whole model: 2 s each for vit_b_16)."""
    import onnx_graphsurgeon as gs

    from ..onnx import io
    from ..onnx.inputs import random_feed

    g = graph.copy()  # same node order as `graph`
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    outs = []
    for k, node in enumerate(nodes):
        twin = g.nodes[index[id(node)]]
        shape = gs.Variable(f"__probe_shape_{k}", np.int64)
        g.nodes.append(gs.Node("Shape", inputs=[twin.inputs[0]], outputs=[shape]))
        target = twin.inputs[1]
        target.dtype, target.shape = np.int64, None
        outs += [target, shape]
    g.outputs = outs
    found = []
    try:
        model = gs.export_onnx(g.cleanup())
        sess = io.session(model, light=io.is_large(model))
        names = [o.name for o in sess.get_outputs()]
        for batch in batches:
            got = dict(zip(names, sess.run(None, random_feed(model, batch=batch))))
            found.append([(got[outs[2 * k].name], got[outs[2 * k + 1].name])
                          for k in range(len(nodes))])
    except Exception:  # an unrunnable probe just means: leave the graph as it is
        return None
    return found
