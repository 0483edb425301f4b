"""Per-region INT8 sensitivity, and the search for the fewest regions to leave in float.

One ONNX Runtime session serves every sensitivity: the FP32 model with each region's
inputs switched between FP32 and fake-quantized by a boolean input (switchable_model), so
trying one region in INT8 is one run, never a new model. Sensitivity of a region: the
output error (||candidate - FP32||^2 / ||FP32||^2, summed over outputs) with that region
alone in INT8, on a few held-out samples.

Search: regions ranked by error per share of MACs; a search over how many of them (in
that order) go to float, each step a measurement of the whole model on held-out samples,
so the INT8 MACs left are as many as the ranking allows. The sensitivities also say where
to look: each step interpolates the goal between the measured ends (Guide), bisecting when
that does not close in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .qdq import QuantPlan, int8_weight
from .regions import Region

SUFFIX = "__fq"


def switchable_model(model: Any, qplan: QuantPlan, amaxes: dict[str, float],
                     found: list[Region], weights: dict | None = None) -> tuple[Any, list[str]]:
    """The FP32 model where every region's planned inputs pass through
    Where(flag, fake-quantized, FP32): one ONNX Runtime session measures any choice of INT8
    regions by feeding one boolean per region. Returns (model, flag input names)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    fq: dict[str, str] = {}  # planned tensor -> its fake-quantized copy
    after: dict[str, list] = {}
    for t in qplan.activations:
        if t not in amaxes:
            continue
        s, z = f"{t}{SUFFIX}_s", f"{t}{SUFFIX}_z"
        g.initializer.extend([
            numpy_helper.from_array(np.array(np.float32(max(amaxes[t], 1e-12) / 127)), s),
            numpy_helper.from_array(np.array(0, np.int8), z)])
        pair = [helper.make_node("QuantizeLinear", [t, s, z], [f"{t}{SUFFIX}_q"]),
                helper.make_node("DequantizeLinear", [f"{t}{SUFFIX}_q", s, z], [f"{t}{SUFFIX}"])]
        after.setdefault(t, []).extend(pair)
        fq[t] = f"{t}{SUFFIX}"
    for w, axis in qplan.weights:
        q, scale = int8_weight(inits[w], axis, weights)
        dq = np.reshape(scale, [-1 if d == axis else 1 for d in range(q.ndim)]) * q
        g.initializer.append(numpy_helper.from_array(dq.astype(np.float32), f"{w}{SUFFIX}"))
        fq[w] = f"{w}{SUFFIX}"
    flags = flag_inputs(g, found)
    where_before = {r.node: [(t, flag) for t in r.inputs if t in fq]
                    for r, flag in zip(found, flags)}
    produced = {o for n in g.node for o in n.output}
    first = [n for t, group in after.items() if t not in produced for n in group]
    nodes = list(first)
    for n in g.node:
        for t, flag in where_before.get(n.name, []):
            sel = f"{t}__{flag}"
            nodes.append(helper.make_node("Where", [flag, fq[t], t], [sel]))
            for i, name in enumerate(n.input):
                if name == t:
                    n.input[i] = sel
        nodes.append(n)
        for o in n.output:
            nodes.extend(after.get(o, []) if o in produced else [])
    del g.node[:]
    g.node.extend(nodes)
    return m, flags


def flag_inputs(g: Any, found: list[Region]) -> list[str]:
    """One boolean graph input per region; their names."""
    from onnx import TensorProto, helper

    flags = [f"__int8_region_{k}" for k in range(len(found))]
    g.input.extend(helper.make_tensor_value_info(f, TensorProto.BOOL, []) for f in flags)
    return flags


def output_error(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> float:
    """Sum over outputs of the relative squared error ||cand - ref||^2 / ||ref||^2, taken
    over the whole output or, where larger, averaged over the slices along one of its
    non-batch axes (metrics.slice_axes): a YOLOv8 output's class scores (0-1)
    sit beside box coordinates in pixels; over the whole output their errors weighed 1e-13
    and the class branch ranked last."""
    from ..metrics import slice_axes

    total = 0.0
    for name, r in ref.items():
        r64 = r.astype(np.float64)
        d = cand[name].astype(np.float64) - r64
        energy, err = float(np.sum(r64 * r64)), float(np.sum(d * d))
        worst = err / energy if energy > 0 else (0.0 if err == 0 else np.inf)
        for axis in slice_axes(r64.shape):
            others = tuple(k for k in range(r64.ndim) if k != axis)
            e = np.sum(r64 * r64, axis=others)
            ok = e > 1e-6 * e.mean()  # near-empty slices: their ratio is noise
            if ok.any():
                worst = max(worst, float(np.mean(np.sum(d * d, axis=others)[ok] / e[ok])))
        total += worst
    return total


def ranking(found: list[Region], errors: dict[str, float]) -> list[str]:
    """Regions to fall back first: most error per share of MACs (the knapsack ratio: a
    depthwise conv whose reparameterised kernels INT8 cannot hold costs few MACs)."""
    total = sum(r.macs for r in found) or 1
    smooth = 1e-6
    return [r.node for r in sorted(found, key=lambda r: -errors.get(r.node, 0.0)
                                   / (r.macs / total + smooth))]


@dataclass
class SearchResult:
    fallen: list[str]
    value: float
    met: bool
    steps: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Guide:
    """What steers the search past plain bisection: `remaining[k]`, the summed sensitivity of
    the regions left in INT8 when the first k of the order are in float (non-increasing,
    len(order) + 1 values); `goal`, the target's threshold; `perfect`, the metric of the
    reference against itself (its value with nothing quantized)."""

    remaining: list[float]
    goal: float
    perfect: float

    def next(self, bad: int, good: int, values: dict[int, float]) -> int | None:
        """The first length in (bad, good) where the value, taken as linear in the remaining
        sensitivity between the two measured ends, reaches the goal; None when the ends do
        not bracket it (the caller bisects)."""
        vb = values.get(bad)
        vg = values.get(good, self.perfect if good == len(self.remaining) - 1 else None)
        if vb is None or vg is None or vg == vb:
            return None
        t = (self.goal - vb) / (vg - vb)
        if not 0 < t <= 1:
            return None
        r = self.remaining[bad] + t * (self.remaining[good] - self.remaining[bad])
        return next((k for k in range(bad + 1, good) if self.remaining[k] <= r), good - 1)


def search(order: list[str], measure: Callable[[set[str]], float],
           holds: Callable[[float], bool], start: float | None = None,
           confirm: Callable[[set[str]], float] | None = None,
           guide: Guide | None = None, start_estimate: float | None = None,
           rounds: int = 2) -> SearchResult:
    """The smallest prefix of `order` whose fallback makes `holds(measure(prefix))` true,
    by bisection over the prefix length: about log2(len(order)) + 2 measurements
    (`start`: the value with nothing in float, when the caller already has it; with
    `confirm`, as `confirm` measures it).
    `guide`: each step goes where the measured ends and the per-region sensitivities put
    the goal (interpolation), and bisects after two steps in a row fall on one side of it
    or fail to halve the interval (at most about twice bisection's steps); on
    all-MiniLM-L6-v2 that is 2-3 steps where bisection takes 5-6, with the same answer.

    `confirm`: a fuller measurement, when `measure` is a cheaper estimate of it. The prefix
    found is confirmed with it; when it misses, the search goes on above it on `measure`
    less the gap seen at that prefix (measure - confirm), up to `rounds` times or until the
    corrected perfect value would miss the goal, and then climbs on `confirm` alone. It
    never goes below a confirmed miss: where `measure` was pessimistic the answer holds but
    may not be the smallest. `start_estimate`: what `measure` gives with nothing in float
    (estimates and the full measure may differ by more than the goal's margin)."""
    steps: list[dict[str, Any]] = []
    kind = "estimate" if confirm else "full"

    def note(k: int, v: float, what: str, bias: float = 0.0) -> float:
        step = {"fallback": k, "value": v, "holds": holds(v), "measure": what}
        steps.append({**step, "bias": bias} if bias else step)
        return v

    def at(k: int, how: Callable[[set[str]], float], what: str, bias: float = 0.0) -> float:
        return note(k, how(set(order[:k])) - bias, what, bias)

    def bisect(bad: int, good: int, how: Callable[[set[str]], float], what: str,
               v_bad: float, bias: float = 0.0) -> tuple[int, float | None]:
        """(the smallest holding length in (bad, good], its value if measured here)"""
        values: dict[int, float] = {bad: v_bad}
        side, run = None, 0  # which side of the goal the last steps fell on, how many
        widths = [good - bad]
        while good - bad > 1:
            closing = len(widths) < 3 or widths[-1] <= widths[-3] / 2  # halved in 2 steps
            mid = guide.next(bad, good, values) if guide and run < 2 and closing else None
            mid = (good + bad) // 2 if mid is None else mid
            values[mid] = at(mid, how, what, bias)
            ok = holds(values[mid])
            run, side = (run + 1 if ok == side else 1), ok
            good, bad = (mid, bad) if ok else (good, mid)
            widths.append(good - bad)
        return good, values.get(good)

    v = at(0, measure, kind) if start is None else note(0, start, "full")
    if not order or (holds(v) and (confirm is None or start is not None)):
        return SearchResult([], v, holds(v), steps)  # a start as `confirm` measures it
    n, good, bias = len(order), 0, 0.0
    if not holds(v):
        good, v = bisect(0, n, measure, kind, v if start_estimate is None else start_estimate)
    if confirm is None:
        if v is None:  # every region in float was assumed to hold: check it
            v = at(good, measure, kind)
        return SearchResult(order[:good], v, holds(v), steps)
    for attempt in range(rounds + 1):
        vc = at(good, confirm, "full")
        if holds(vc) or good == n:
            return SearchResult(order[:good], vc, holds(vc), steps)
        bias += (v if v is not None else vc) - vc  # the search's optimism at its answer
        if attempt == rounds or (guide and not holds(guide.perfect - bias)):
            break  # a goal past what a corrected estimate can show (top-1 >= 1.0): climb
        good, v = bisect(good, n, measure, kind, vc, bias)
    good, vc2 = bisect(good, n, confirm, "full", vc)  # climb on the fuller measure
    v = at(good, confirm, "full") if vc2 is None else vc2
    return SearchResult(order[:good], v, holds(v), steps)
