"""Clean stage: prepare the model (opset >= 13 for per-channel Q/DQ, distinct names for
unknown symbolic dims), run the ordered GraphSurgeon passes, keep the source's metadata, and
check that the outputs are unchanged on a real sample (or on random inputs of the shapes the
user gave, else DEFAULT_DIM for every symbolic non-batch dim)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..context import Context
from ..errors import GATE_FAILED, TrtBuildError
from ..onnx import io
from ..onnx.inputs import model_outputs, random_feed
from ..passes import PASSES, Pass
from ..report import Timer

log = logging.getLogger(__name__)
MAX_DIFF = 1e-4
MIN_OPSET = 13
DEFAULT_DIM = 64  # symbolic non-batch dims in the check when no sample or shape is given


@dataclass
class CleanResult:
    path: Path
    nodes_before: dict[str, int]
    nodes_after: dict[str, int]
    passes: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: float = 0.0
    prepared: list[str] = field(default_factory=list)
    check_input: str = ""

    def record(self) -> dict[str, Any]:
        return {"output": str(self.path), "nodes_before": sum(self.nodes_before.values()),
                "nodes_after": sum(self.nodes_after.values()),
                "ops_before": self.nodes_before, "ops_after": self.nodes_after,
                "passes": self.passes, "max_abs_diff": self.max_abs_diff,
                "prepared": self.prepared, "check_input": self.check_input}


def run(ctx: Context) -> dict[str, Any]:
    """out/model.onnx -> out/model.clean.onnx, the FP32 reference of every later stage."""
    result = clean(ctx.artifacts.model, ctx.out / "model.clean.onnx",
                   feed=lambda model: check_feed(ctx, model))
    ctx.set_clean(result.path)
    return result.record()


def check_feed(ctx: Context, model: Any) -> tuple[dict[str, Any], str]:
    """Inputs for the before/after check: the first calibration (or validation) sample;
    else random values of the shapes given with --input / --shapes (opt); else batch 2 and
    DEFAULT_DIM for other symbolic dims."""
    from ..onnx.inputs import model_inputs
    from ..onnx.shapes import check_profiles

    s = ctx.settings
    check_profiles(model_inputs(model), s.engine.profiles)
    sample = ctx.first_sample(model)
    if sample:
        return sample
    shapes = {**dict(s.export.inputs), **{p.name: p.opt for p in s.engine.profiles}}
    return random_feed(model, batch=2, seed=1, shapes=shapes, dim=DEFAULT_DIM), (
        "random inputs" + (f", shapes {shapes}" if shapes else
                           f", symbolic dims = {DEFAULT_DIM} (batch 2)"))


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def clean_model(model: Any, passes: list[tuple[str, Pass]] = PASSES) -> tuple[Any, list[dict]]:
    """Run `passes` in order on a ModelProto; returns the cleaned, shape-inferred model
    (with the source's metadata_props)."""
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
    io.copy_metadata(model, out)
    return onnx.shape_inference.infer_shapes(out), done


def clean(src: Path, out: Path, passes: list[tuple[str, Pass]] = PASSES,
          feed: Callable[[Any], tuple[dict, str]] | None = None) -> CleanResult:
    """Write the cleaned model to `out`. `feed(model)` gives the check's inputs and says
    what they are (default: random, batch 2). Raises TrtBuildError if outputs change."""
    model = io.load(src)
    before = op_counts(model)
    prepared_model, prepared = prepare(model)
    cleaned, done = clean_model(prepared_model, passes)
    io.check_model(cleaned, out)
    inputs, described = feed(model) if feed else (random_feed(model, batch=2, seed=1), "random")
    diff = outputs_diff(model, cleaned, feed=inputs, where=src)
    if diff > MAX_DIFF:
        raise TrtBuildError(f"{src}: cleaning changed the outputs (max abs diff {diff:.3g} on "
                            f"{described})", GATE_FAILED)
    io.save(cleaned, out)
    return CleanResult(out, before, op_counts(cleaned), done, diff, prepared, described)


def prepare(model: Any) -> tuple[Any, list[str]]:
    """Opset >= MIN_OPSET (per-channel DequantizeLinear needs 13) and distinct names for
    '?' symbolic dims (TensorRT treats equal names as one dimension). Says what it did."""
    import onnx

    done = []
    opset = io.opset(model)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
            done.append(f"opset {opset} -> {MIN_OPSET}")
        except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
            log.warning("opset %d kept: the ONNX version converter failed (%s)", opset,
                        str(e).splitlines()[0][:120])
    renamed = io.name_unknown_dims(model)
    if renamed:
        done.append(f"named {renamed} unknown symbolic dims")
    return model, done


def outputs_diff(a: Any, b: Any, batch: int = 2, feed: dict | None = None,
                 where: str | Path = "model") -> float:
    """Max abs difference of two models' outputs on the same input (default: random);
    data-dependent outputs (io.data_dependent_outputs) must only agree in dtype and rank.
    Raises TrtBuildError(1) when they do not."""
    feed = feed if feed is not None else random_feed(a, batch=batch, seed=1)
    before = io.run(io.session(a, where=where), feed, str(where))
    after = io.run(io.session(b, where=f"{where} (cleaned)"), feed, f"{where} (cleaned)")
    diff, problems = io.compare_outputs(model_outputs(a), before, after,
                                        io.data_dependent_outputs(a))
    if problems:
        raise TrtBuildError(f"{where}: cleaning changed the outputs: {'; '.join(problems)}",
                            GATE_FAILED)
    return diff
