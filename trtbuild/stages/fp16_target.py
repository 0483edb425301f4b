"""FP16 that meets --accuracy-target: when the FP16 model misses the target on --val, the
fewest FP16 nodes go back to FP32, found as the INT8 search finds its regions
(trtbuild.quant.sensitivity.search), and the fp16 stage writes that model.

Each node's sensitivity is the output error with only that node in FP16 (its float inputs,
weights and outputs rounded), the rest FP32, on a few samples, all through one session
whose rounding is switched per node by boolean inputs. Nodes go back to FP32 most
sensitive first; every search step converts the model with them kept and measures its
emulation (trtbuild.quant.emulate) on the first half of the held-out samples; the answer
is then measured once on the other half, which no choice saw, and that value is reported
and gated (as in the sensitivity stage).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..config import Fp16Settings
from ..context import Context
from ..data import read_labels
from ..metrics import batch_axes, compare, feature_outputs, gate_value
from ..onnx import io
from ..progress import bar
from ..quant import fp16
from ..quant.emulate import emulate_typed
from ..quant.sensitivity import output_error, search
from .sensitivity import (
    SEARCH_SAMPLES,
    SENSITIVITY_SAMPLES,
    Part,
    dynamic_batch,
    first_rows,
    halves,
    held_out_miss,
    run_feeds,
    stacked,
    subset,
)

log = logging.getLogger(__name__)


def fallback(ctx: Context, model: Any, s: Fp16Settings, keep_at: frozenset[int]
             ) -> tuple[frozenset[int], dict[str, Any]]:
    """(positions to keep in FP32: `keep_at` and the fewest more for which the target holds
    on the held-out half, the search's record). `model` is the FP32 graph the fp16 stage
    converts (BatchNormalization folded)."""
    t0 = time.perf_counter()
    target = ctx.settings.gates.accuracy_target
    data, labels_dir, label = ctx.eval_data()
    names, feeds = subset(data, SEARCH_SAMPLES)
    labels = read_labels(labels_dir) if labels_dir else None
    axes, features = batch_axes(model), feature_outputs(model)
    chosen, held = halves(Part(feeds, names, run_feeds(io.session(model), feeds), axes))

    def score(fallen: frozenset[int], part: Part) -> float:
        half, _ = fp16.convert(model, s, keep_at | fallen)
        sess = io.session(emulate_typed(half))
        record = compare(part.ref(), stacked(run_feeds(sess, part.feeds), axes), part.names,
                         labels, ctx.settings.gates.metric_script, features)
        return gate_value(record, target)

    floats = io.float_tensors(model)
    candidates = [p for p, h in enumerate(fp16.half_nodes(model.graph, floats, s, keep_at))
                  if h and any(o in floats for o in model.graph.node[p].output)]
    few = first_rows(feeds, int(np.clip(len(names) // max(len(candidates), 1),
                                        *SENSITIVITY_SAMPLES)), exact=dynamic_batch(model))
    errors = node_errors(model, candidates, few, axes)
    order = [str(p) for p in sorted(candidates, key=lambda p: -errors[p])]
    with bar("fp16 search: evaluations", None) as progress:
        def measured(fallen: set[str]) -> float:
            value = score(frozenset(map(int, fallen)), chosen)
            progress.advance(1)
            progress.note(f"{len(fallen)} nodes in FP32: {target.name} {value:.4f}")
            return value
        start = measured(set())
        result = search(order, measured, target.holds, start=start)
        fallen = frozenset(map(int, result.fallen))
        confirmed = score(fallen, held) if held is not None else None
    met = result.met if confirmed is None else target.holds(confirmed)
    nodes = model.graph.node
    record = {"target": str(target), "metric": target.name, "val": label,
              "searched_on": len(chosen.names), "held_out": len(held.names) if held else 0,
              "before": start, "search_value": result.value,
              "after": result.value if confirmed is None else confirmed, "met": met,
              "evaluations": len(result.steps), "candidates": len(candidates),
              "fp32_nodes": [{"node": nodes[p].name or f"#{p}", "op": nodes[p].op_type,
                              "sensitivity": errors[p]} for p in sorted(fallen)],
              "steps": result.steps, "seconds": round(time.perf_counter() - t0, 2)}
    if not met:
        log.warning("%s: %s not reached in FP16 with %d of %d nodes back in FP32 (%.4f)",
                    label, target, len(fallen), len(candidates), record["after"])
    if result.met and not met:  # the stage's gate
        record["gate_failures"] = [held_out_miss(target, confirmed, held, result.value,
                                                 chosen)]
    return keep_at | fallen, record


def node_errors(model: Any, positions: list[int], feeds: list[dict[str, np.ndarray]],
                axes: dict[str, int]) -> dict[int, float]:
    """{position: output error with only that node in FP16}: its float inputs (weights
    too) and outputs rounded to FP16, the rest FP32. One session: `Where(flag, rounded,
    exact)` on each such tensor, a boolean input per node."""
    import onnx
    from onnx import TensorProto, helper

    floats = io.float_tensors(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    flags = {p: f"trtbuild_fp16_flag_{p}" for p in positions}

    def rounded(flag: str, exact: str, out: str) -> list[Any]:
        return [helper.make_node("Cast", [exact], [f"{out}__h"], to=TensorProto.FLOAT16),
                helper.make_node("Cast", [f"{out}__h"], [f"{out}__r"], to=TensorProto.FLOAT),
                helper.make_node("Where", [flag, f"{out}__r", exact], [out])]

    rebuilt = []
    for p, node in enumerate(g.node):
        before, after = [], []
        if p in flags:
            for j, name in enumerate(node.input):
                if name in floats:
                    node.input[j] = f"{name}__in{p}_{j}"
                    before += rounded(flags[p], name, node.input[j])
            for j, name in enumerate(node.output):
                if name in floats:
                    node.output[j] = f"{name}__exact"
                    after += rounded(flags[p], node.output[j], name)
        rebuilt += [*before, node, *after]
    del g.node[:]
    g.node.extend(rebuilt)
    g.input.extend(helper.make_tensor_value_info(f, TensorProto.BOOL, []) for f in flags.values())
    sess = io.session(m)
    off = {f: np.array(False) for f in flags.values()}
    ref = stacked(run_feeds(sess, feeds, off), axes)
    errors = {}
    with bar("fp16 sensitivity", len(flags)) as progress:
        for p, f in flags.items():
            errors[p] = output_error(ref, stacked(run_feeds(sess, feeds, {**off, f: np.array(
                True)}), axes))
            progress.advance(1)
    return errors
