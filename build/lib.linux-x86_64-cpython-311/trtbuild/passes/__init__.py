"""Graph cleanup passes: small functions `(graph) -> graph` on a GraphSurgeon graph, run in order.

Each pass edits in place, returns the graph, and never renames or removes graph inputs or
outputs. `PASSES` is the explicit order `trtbuild clean` runs.
"""

from __future__ import annotations

from typing import Any, Callable

from .fold import fold_constants
from .noop import remove_noops
from .reshape import constant_batch_reshapes
from .tidy import cleanup, infer_shapes, toposort

Pass = Callable[[Any], Any]

PASSES: list[tuple[str, Pass]] = [
    ("fold_constants", fold_constants),
    ("remove_noops", remove_noops),
    ("constant_batch_reshapes", constant_batch_reshapes),
    ("infer_shapes", infer_shapes),
    ("fold_constants_2", fold_constants),
    ("remove_noops_2", remove_noops),
    ("cleanup", cleanup),
    ("toposort", toposort),
]
