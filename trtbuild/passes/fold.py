"""Constant folding with GraphSurgeon (ONNX Runtime evaluates the constant subgraphs)."""

from typing import Any


def fold_constants(graph: Any) -> Any:
    """Fold constant subgraphs and static shape arithmetic, then drop what became dead.

    Guarantees: graph inputs/outputs unchanged. Folding stops at tensors over 1 GiB.
    """
    from ..thirdparty import quiet_onnxruntime

    quiet_onnxruntime()  # GraphSurgeon evaluates with its own ONNX Runtime sessions
    graph.cleanup(remove_unused_graph_inputs=False)
    # flatten_subgraphs=False: GraphSurgeon 0.6 inlines constant-condition If branches out of
    # topological order when they reference outer-scope tensors (silero-vad's decoder)
    graph.fold_constants(fold_shapes=True, partitioning="basic", error_ok=True,
                         size_threshold=1 << 30, flatten_subgraphs=False)
    return graph.cleanup(remove_unused_graph_inputs=False)
