"""Every graph rewrite, each a named pass in an explicit order.

`PREPARE`: passes on the ModelProto, `(model) -> (model, what it did)`, that the clean stage
runs first (opset, symbolic dim names, ONNX Runtime fusions undone, 16-bit inputs widened).
`PASSES`: small functions `(graph) -> graph` on a GraphSurgeon graph that `trtbuild clean`
runs next; each edits in place and returns the graph. `fold_batchnorm` (BatchNormalization
into its Conv) is the FP16 stage's. No pass renames or removes graph inputs or outputs.
"""

from __future__ import annotations

from typing import Any, Callable

from .batchnorm import fold_batchnorm
from .fold import fold_constants
from .noop import remove_noops
from .prepare import name_unknown_dims, unfuse_contrib, upgrade_opset, widen_inputs
from .reshape import constant_batch_reshapes
from .tidy import cleanup, infer_shapes, name_nodes, toposort

Pass = Callable[[Any], Any]
ModelPass = Callable[[Any], tuple[Any, list[str]]]

PREPARE: list[tuple[str, ModelPass]] = [
    ("upgrade_opset", upgrade_opset),
    ("name_unknown_dims", name_unknown_dims),
    ("unfuse_contrib", unfuse_contrib),
    ("widen_inputs", widen_inputs),
]

PASSES: list[tuple[str, Pass]] = [
    ("fold_constants", fold_constants),
    ("remove_noops", remove_noops),
    ("constant_batch_reshapes", constant_batch_reshapes),
    ("infer_shapes", infer_shapes),
    ("fold_constants_2", fold_constants),
    ("remove_noops_2", remove_noops),
    ("cleanup", cleanup),
    ("toposort", toposort),
    ("name_nodes", name_nodes),
]

__all__ = ["PASSES", "PREPARE", "Pass", "ModelPass", "fold_batchnorm"]
