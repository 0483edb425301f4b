"""Constant folding with GraphSurgeon (ONNX Runtime evaluates the constant subgraphs)."""

import logging
from typing import Any

log = logging.getLogger(__name__)


def fold_constants(graph: Any) -> Any:
    """Fold constant subgraphs and static shape arithmetic, then drop what became dead.

    Guarantees: graph inputs/outputs unchanged. Folding stops at tensors over 1 GiB.
    """
    from ..thirdparty import quiet_onnxruntime

    quiet_onnxruntime()  # GraphSurgeon evaluates with its own ONNX Runtime sessions
    graph.cleanup(remove_unused_graph_inputs=False)
    # flatten_subgraphs=False: GraphSurgeon 0.6 inlines constant-condition If branches out of
    # topological order when they reference outer-scope tensors (silero-vad's decoder)
    # The whole graph in one evaluation first: partitioning copies the graph once per
    # partition (534 copies, 37 of vit_l_16's 46 s of folding). Where ONNX Runtime cannot
    # evaluate it whole, partitions, so one failing part does not stop the others.
    try:
        graph.fold_constants(fold_shapes=True, partitioning=None, error_ok=False,
                             size_threshold=1 << 30, flatten_subgraphs=False)
    except Exception as e:  # noqa: BLE001 - GraphSurgeon re-raises ONNX Runtime's own types
        if "is not a registered function/op" in str(e):
            # an op of a plugin's domain: every partition holding it fails the same way, and
            # GraphSurgeon's partitioning then raised after 100 s on a 4-node graph
            log.warning("constant folding skipped: ONNX Runtime cannot run %s",
                        str(e).rsplit("error: ", 1)[-1])
            return graph.cleanup(remove_unused_graph_inputs=False)
        graph.fold_constants(fold_shapes=True, partitioning="basic", error_ok=True,
                             size_threshold=1 << 30, flatten_subgraphs=False)
    return graph.cleanup(remove_unused_graph_inputs=False)
