"""Clean stage: run the ordered GraphSurgeon passes, check outputs are unchanged."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..context import Context
from ..errors import GATE_FAILED, TrtBuildError
from ..onnx import io
from ..onnx.inputs import random_feed
from ..passes import PASSES, Pass
from ..report import Timer

log = logging.getLogger(__name__)
MAX_DIFF = 1e-4


@dataclass
class CleanResult:
    path: Path
    nodes_before: dict[str, int]
    nodes_after: dict[str, int]
    passes: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: float = 0.0

    def record(self) -> dict[str, Any]:
        return {"output": str(self.path), "nodes_before": sum(self.nodes_before.values()),
                "nodes_after": sum(self.nodes_after.values()),
                "ops_before": self.nodes_before, "ops_after": self.nodes_after,
                "passes": self.passes, "max_abs_diff": self.max_abs_diff}


def run(ctx: Context) -> dict[str, Any]:
    """out/model.onnx -> out/model.clean.onnx, the FP32 reference of every later stage."""
    result = clean(ctx.artifacts.model, ctx.out / "model.clean.onnx")
    ctx.set_clean(result.path)
    return result.record()


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def clean_model(model: Any, passes: list[tuple[str, Pass]] = PASSES) -> tuple[Any, list[dict]]:
    """Run `passes` in order on a ModelProto; returns the cleaned, shape-inferred model."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    done = []
    for name, fn in passes:
        with Timer() as t:
            graph = fn(graph)
        done.append({"pass": name, "nodes": len(graph.nodes), "seconds": round(t.seconds, 4)})
        log.debug("pass %s: %d nodes (%.2fs)", name, len(graph.nodes), t.seconds)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return onnx.shape_inference.infer_shapes(out), done


def clean(src: Path, out: Path, passes: list[tuple[str, Pass]] = PASSES) -> CleanResult:
    """Write the cleaned model to `out`. Raises TrtBuildError if outputs change (> 1e-4)."""
    model = io.load(src)
    before = op_counts(model)
    cleaned, done = clean_model(model, passes)
    io.check_model(cleaned, out)
    diff = outputs_diff(model, cleaned)
    if diff > MAX_DIFF:
        raise TrtBuildError(f"{src}: cleaning changed the outputs (max abs diff {diff:.3g})",
                            GATE_FAILED)
    io.save(cleaned, out)
    return CleanResult(out, before, op_counts(cleaned), done, diff)


def outputs_diff(a: Any, b: Any, batch: int = 2) -> float:
    """Max abs difference of two models' outputs on the same random input."""
    feed = random_feed(a, batch=batch, seed=1)
    return io.max_abs_diff(io.session(a).run(None, feed), io.session(b).run(None, feed))
