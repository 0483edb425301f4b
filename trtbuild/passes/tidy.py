"""Dead-code removal and topological sort."""

import itertools
from typing import Any


def cleanup(graph: Any) -> Any:
    """Remove nodes and tensors that do not reach a graph output; keeps unused graph inputs."""
    return graph.cleanup(remove_unused_graph_inputs=False)


def toposort(graph: Any) -> Any:
    return graph.toposort()


def infer_shapes(graph: Any) -> Any:
    """Re-run ONNX shape inference so later folding sees the shapes earlier passes fixed."""
    import onnx_graphsurgeon as gs

    from ..onnx import io

    for t in graph.tensors().values():  # drop stale intermediate shapes; inference redoes them
        if isinstance(t, gs.Variable) and t not in graph.inputs and t not in graph.outputs:
            t.shape = None
    model = io.infer_shapes(gs.export_onnx(graph), data_prop=True)
    return gs.import_onnx(model)


def name_nodes(graph: Any) -> Any:
    """Give every unnamed node a unique name (`node_K`): the Q/DQ plan, the sensitivity
    regions and TensorRT's layer names address nodes by name, and naming them here keeps
    the cleaned model on disk the one every later stage reads (a converted TF model's nodes
    came unnamed)."""
    taken = {n.name for n in graph.nodes if n.name}
    free = (name for name in (f"node_{k}" for k in itertools.count()) if name not in taken)
    for node in graph.nodes:
        node.name = node.name or next(free)
    return graph
