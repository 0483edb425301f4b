"""Clean stage: prepare the model (passes.PREPARE: opset >= 13 for per-channel Q/DQ,
distinct names for unknown symbolic dims, ...), run the ordered GraphSurgeon passes
(passes.PASSES), keep the source's metadata, and check that the outputs are unchanged on
a real sample (or on random inputs of the shapes the user gave, else DEFAULT_DIM for every
symbolic non-batch dim)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..context import Context
from ..errors import GATE_FAILED, TrtBuildError
from ..onnx import io
from ..onnx.inputs import model_inputs, model_outputs, random_feed
from ..passes import PASSES, PREPARE, Pass
from ..records import CleanRecord
from ..report import Timer

log = logging.getLogger(__name__)
MAX_DIFF = 1e-4
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


def run(ctx: Context) -> CleanRecord:
    """out/model.onnx -> out/model.clean.onnx, the FP32 reference of every later stage."""
    result = clean(ctx.artifacts.model, ctx.out / "model.clean.onnx",
                   feed=lambda model: check_feed(ctx, model))
    ctx.set_clean(result.path)
    return CleanRecord.of(result.record())


def check_feed(ctx: Context, model: Any) -> tuple[dict[str, Any], str]:
    """Inputs for the before/after check: the first calibration (or validation) sample;
    else random values of the shapes given with --input / --shapes (opt); else batch 2 and
    DEFAULT_DIM for other symbolic dims."""
    from ..onnx.shapes import check_profiles

    s = ctx.settings
    check_profiles(model_inputs(model), s.engine.profiles)
    sample = ctx.first_sample(model)
    if sample:
        return sample
    shapes = ctx.given_shapes()
    return random_feed(model, batch=2, seed=1, shapes=shapes, dim=DEFAULT_DIM), (
        "random inputs" + (f", shapes {shapes}" if shapes else
                           f", symbolic dims = {DEFAULT_DIM} (batch 2)"))


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def clean_model(model: Any, passes: list[tuple[str, Pass]] = PASSES) -> tuple[Any, list[dict]]:
    """Run `passes` in order on a ModelProto; returns the cleaned, shape-inferred model
    (with the source's metadata_props)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    done = []
    large = io.is_heavy(model)
    for name, fn in passes:
        with Timer() as t:
            graph = fn(graph)
            if large:
                io.trim_heap()
        done.append({"pass": name, "nodes": len(graph.nodes), "seconds": round(t.seconds, 4)})
        log.debug("pass %s: %d nodes (%.2fs)", name, len(graph.nodes), t.seconds)
    out = gs.export_onnx(graph)
    if large:  # the graph's copy of the weights, before shape inference adds its own work
        del graph
        io.trim_heap()
    out.ir_version = model.ir_version
    io.copy_metadata(model, out)
    return io.infer_shapes(out), done


def clean(src: Path, out: Path, passes: list[tuple[str, Pass]] = PASSES,
          feed: Callable[[Any], tuple[dict, str]] | None = None) -> CleanResult:
    """Write the cleaned model to `out`. `feed(model)` gives the check's inputs and says
    what they are (default: random, batch 2, DEFAULT_DIM for other symbolic dims: a
    YOLOv8 cannot run 1x1 images). Raises TrtBuildError if outputs change."""
    model = io.load(src)
    before = op_counts(model)
    inputs, described = feed(model) if feed else (
        random_feed(model, batch=2, seed=1, dim=DEFAULT_DIM),
        f"random inputs, symbolic dims = {DEFAULT_DIM} (batch 2)")
    given = model_outputs(model), io.data_dependent_outputs(model)
    # prepared in place: the check below runs the file as the user gave it, so no second
    # copy of the weights is held (2.5 GB for vit_h_14)
    prepared_model, prepared = prepare(model)
    del model
    cleaned, done = clean_model(prepared_model, passes)
    del prepared_model
    after = op_counts(cleaned)
    if not io.is_heavy(cleaned):
        io.check_model(cleaned, out, ours=True)
        diff = outputs_diff(src, cleaned, feed=inputs, where=src, given=given)
        _check_diff(diff, src, described)
        io.save(cleaned, out)
    else:  # written once and checked from the file: one copy of the weights at a time
        io.save(cleaned, out, keep_weights=False)
        del cleaned
        io.trim_heap()
        try:
            io.check_model(out, out, ours=True)
            diff = outputs_diff(src, out, feed=inputs, where=src, given=given, light=True)
            _check_diff(diff, src, described)
        except BaseException:
            for path in (out, out.with_name(f"{out.name}.data")):
                path.unlink(missing_ok=True)
            raise
    return CleanResult(out, before, after, done, diff, prepared, described)


def _check_diff(diff: float, src: Path, described: str) -> None:
    if diff > MAX_DIFF:
        raise TrtBuildError(f"{src}: cleaning changed the outputs (max abs diff {diff:.3g} on "
                            f"{described})", GATE_FAILED)


def prepare(model: Any) -> tuple[Any, list[str]]:
    """The PREPARE passes on `model` (edited in place, or replaced); says what they did."""
    done: list[str] = []
    for name, step in PREPARE:
        model, did = step(model)
        log.debug("prepare %s: %s", name, "; ".join(did) or "nothing to do")
        done += did
    return model, done


def outputs_diff(a: Any, b: Any, batch: int = 2, feed: dict | None = None,
                 where: str | Path = "model", given: tuple | None = None,
                 light: bool = False) -> float:
    """Max abs difference of two models' outputs on the same input (default: random);
    data-dependent outputs (io.data_dependent_outputs) must only agree in dtype and rank.
    `a` may be a path when `feed` and `given` (a's outputs and data-dependent outputs) are
    given: its session then reads the file. Raises TrtBuildError(1) when they differ."""
    feed = feed if feed is not None else random_feed(a, batch=batch, seed=1)
    outputs, dependent = given or (model_outputs(a), io.data_dependent_outputs(a))
    before = io.run(io.session(a, where=where, light=light), feed, str(where))
    if light:
        io.trim_heap()
    graph_of_b = b
    if isinstance(b, (str, Path)):  # its inputs, read without its weights
        import onnx

        graph_of_b = onnx.load(str(b), load_external_data=False)
    types = {i.name: i.dtype for i in model_inputs(graph_of_b)}  # prepare() may widen int16
    feed_b = {k: np.asarray(v).astype(types.get(k, np.asarray(v).dtype), copy=False)
              for k, v in feed.items()}
    after = io.run(io.session(b, where=f"{where} (cleaned)", light=light), feed_b,
                   f"{where} (cleaned)")
    diff, problems = io.compare_outputs(outputs, before, after, dependent)
    if problems:
        raise TrtBuildError(f"{where}: cleaning changed the outputs: {'; '.join(problems)}",
                            GATE_FAILED)
    return diff
