"""Sensitivity stage (--accuracy-target): when the INT8 model misses the target on held-out
data, measure what each quantized region costs (trtbuild.quant.sensitivity), leave the
fewest regions in float until the target holds, and rewrite out/model.int8.onnx as that
mixed-precision model (INT8 Q/DQ where kept, the --high-precision type elsewhere). Each
search step measures the model as written (FP16 parts emulated): the guided search on the
first ESTIMATE_SAMPLES held-out samples, its answer on up to SEARCH_SAMPLES (going on above
it when it misses there); the validate stage then checks it on all of them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..context import Context
from ..data import concat, read_labels, rows
from ..errors import TrtBuildError
from ..metrics import batch_axes, compare, gate_value, stack
from ..onnx import io
from ..progress import bar
from ..quant.qdq import insert_qdq, plan
from ..quant.regions import count_macs, regions, without
from ..quant.sensitivity import (
    Guide,
    output_error,
    ranking,
    search,
    switchable_model,
    switchable_qdq,
)
from .quantize import base_model, with_float_parts, write_int8

log = logging.getLogger(__name__)
SEARCH_SAMPLES = 1000     # held-out samples the search's answer is measured on (validate: all)
ESTIMATE_SAMPLES = 64     # of those, what each bisection step measures before that
SENSITIVITY_SAMPLES = (2, 16)  # samples each region's sensitivity is measured on


def run(ctx: Context) -> dict[str, Any]:
    target = ctx.settings.gates.accuracy_target
    model = base_model(ctx)
    qplan = plan(model)
    found = regions(model, qplan)
    data, labels_dir, label = ctx.eval_data()
    names, feeds = _subset(data, SEARCH_SAMPLES)
    if not feeds:
        raise TrtBuildError(f"{label}: no validation samples for --accuracy-target")
    count_macs(model, feeds[0], found)
    labels = read_labels(labels_dir) if labels_dir else None
    axes = batch_axes(model)
    trial = _Trials(ctx, model, qplan, found, names, feeds, labels, axes)
    estimating = len(names) >= 2 * ESTIMATE_SAMPLES  # estimates on a few, the answer on all
    start = trial.measure(set(), keep=len(_first_rows(feeds, ESTIMATE_SAMPLES))
                          if estimating else 0)
    errors, measured_on = dict.fromkeys((r.node for r in found), 0.0), 0
    if not target.holds(start):  # only a miss pays for the sensitivity pass
        errors, measured_on = _sensitivities(model, qplan, ctx, found, feeds, trial.fp32,
                                             len(names), axes, trial.free_batch)
    order = ranking(found, errors)
    guide = Guide([sum(errors[n] for n in order[k:]) for k in range(len(order) + 1)],
                  target.value, trial.perfect(ESTIMATE_SAMPLES))
    if estimating:
        result = search(order, lambda f: trial.estimate(f, ESTIMATE_SAMPLES), target.holds,
                        start=start, confirm=trial.measure, guide=guide,
                        start_estimate=trial.head_value())
    else:
        result = search(order, trial.measure, target.holds, start=start, guide=guide)
    fallen = set(result.fallen)
    written = trial.write(fallen) if fallen else {}
    high = ctx.settings.calib.high_precision
    total = sum(r.macs for r in found) or 1
    kept = sum(r.macs for r in found if r.node not in fallen)
    rank = {n: k for k, n in enumerate(order)}
    record: dict[str, Any] = {
        "target": str(target), "metric": target.name, "val": label, "samples": len(names),
        "sensitivity_samples": measured_on, "before": result.steps[0]["value"],
        "after": result.value, "met": result.met, "evaluations": len(result.steps),
        "steps": result.steps, "regions_total": len(found), "fallback_regions": len(fallen),
        "int8_mac_coverage": kept / total, "output": str(ctx.artifacts.int8),
        "model": {k: v for k, v in written.items() if k != "output"},
        "regions": [{"node": r.node, "op_type": r.op_type, "macs": r.macs,
                     "mac_share": r.macs / total, "sensitivity": errors[r.node],
                     "rank": rank[r.node],
                     "precision": high if r.node in fallen else "int8"} for r in found]}
    if not result.met:
        log.warning("%s: %s not reached even with %d of %d regions in float (%.4f)",
                    ctx.artifacts.int8, target, len(fallen), len(found), result.value)
    return record


class _Trials:
    """The target's value for a choice of regions in float, on held-out samples."""

    def __init__(self, ctx: Context, model: Any, qplan: Any, found: list, names: list[str],
                 feeds: list[dict[str, np.ndarray]], labels: Any, axes: dict[str, int]):
        self.ctx, self.model, self.qplan, self.found = ctx, model, qplan, found
        self.names, self.feeds, self.labels, self.axes = names, feeds, labels, axes
        self.fp32 = io.session(model)
        self.free_batch = _dynamic_batch(model)  # any number of rows on axis 0
        # per feed, as run: a feed's outputs need not have one row per input row (an LSTM
        # VAD's state has one per feed, its probabilities one per window)
        self.ref_runs = _runs(self.fp32, feeds)
        self._refs: dict[int, dict[str, np.ndarray]] = {}  # the first m feeds' (m < all)
        self._joined: dict[int, dict[str, np.ndarray]] = {}  # as one run, for estimates
        self._switch: tuple[Any, list[str]] | None = None
        self.kept: list | None = None  # runs of a measure(keep=N)
        self.last: tuple | None = None  # (fallen, Q/DQ model, with_float_parts) measured last

    def qdq(self, fallen: set[str]) -> Any:
        return insert_qdq(self.model, without(self.qplan, fallen), self.ctx.amaxes,
                          self.ctx.int8_weights)

    def measure(self, fallen: set[str], keep: int = 0) -> float:
        """On the model the validate stage runs: the real Q/DQ graph, its float parts
        FP16-emulated unless --high-precision fp32 (on PP-OCRv4 rec strings_equal moved by
        0.035 between the two), in a new session. With nothing in float that is the
        quantize stage's model, already converted. `keep`: the outputs of that many first
        feeds are kept for head_value."""
        ctx = self.ctx
        if fallen or ctx.int8_check is None:
            qdq = self.qdq(fallen)
            self.last = frozenset(fallen), qdq, with_float_parts(ctx, qdq)
            check = self.last[2][1]
        else:
            check = ctx.int8_check
        return self._value(self.feeds, io.session(check), keep=keep)

    def head_value(self) -> float:
        """The value of the outputs kept by measure(keep=N), the feeds an estimate runs:
        what estimate() gives for the same model, without running it (the first rows may
        score apart from all of them: on PP-OCRv4 rec 0.92 vs 0.955)."""
        kept, self.kept = self.kept, None  # once: they may be large
        return self._score(len(kept), _stack(kept, self.axes))

    def write(self, fallen: set[str]) -> dict[str, Any]:
        """Write the model with `fallen` in float (as last measured, when it was)."""
        if self.last and self.last[0] == frozenset(fallen):
            return write_int8(self.ctx, self.last[1], self.last[2])
        return write_int8(self.ctx, self.qdq(fallen))

    def estimate(self, fallen: set[str], rows: int) -> float:
        """On the first `rows` samples, through one session for every estimate: the
        written model with each region's Q/DQ bypassed by a flag (switchable_qdq), its FP16
        decisions those of the all-INT8 model."""
        if self._switch is None:
            m, flags = switchable_qdq(self.qdq(set()), self.model, self.found)
            known = self.ctx.fp16_ranges  # a switch holds one of two measured tensors
            for n in m.graph.node:
                if n.op_type == "Where" and n.input[1] in known and n.input[2] in known:
                    known.setdefault(n.output[0], known[n.input[1]] or known[n.input[2]])
            self._switch = io.session(with_float_parts(self.ctx, m, build=False)[1]), flags
        sess, flags = self._switch
        on = {f: np.array(r.node not in fallen) for f, r in zip(flags, self.found)}
        part = _first_rows(self.feeds, rows)
        m = len(part)
        if self.free_batch and _same_shapes(part) and all(map(_one_batch, part)):
            joined = _stack(_runs(sess, [concat(part)], on), self.axes)  # one run, not m
            ref = self.ref(m)
            if any(np.shape(joined[k]) != np.shape(v) for k, v in ref.items()):
                if m not in self._joined:  # an output not stacked on its batch axis
                    self._joined[m] = _stack(_runs(self.fp32, [concat(part)]), self.axes)
                ref = self._joined[m]
            return self._score(m, joined, ref)
        return self._score(m, _stack(_runs(sess, part, on), self.axes))

    def perfect(self, rows: int) -> float:
        """The target's metric of the FP32 outputs against themselves (on the first `rows`)."""
        m = len(_first_rows(self.feeds, rows))
        return self._score(m, self.ref(m))

    def ref(self, m: int) -> dict[str, np.ndarray]:
        """The FP32 outputs of the first m feeds, batch axis first (all of them stacked
        anew at each use: they are as large as every output on every sample)."""
        if m >= len(self.feeds):
            return _stack(self.ref_runs, self.axes)
        if m not in self._refs:
            self._refs[m] = _stack(self.ref_runs[:m], self.axes)
        return self._refs[m]

    def _value(self, part: list[dict[str, np.ndarray]], sess: Any, keep: int = 0) -> float:
        runs = _runs(sess, part)
        if keep:
            self.kept = runs[:keep]
        return self._score(len(part), _stack(runs, self.axes))

    def _score(self, m: int, cand: dict[str, np.ndarray],
               ref: dict[str, np.ndarray] | None = None) -> float:
        """The target's value for the outputs of the first m feeds."""
        s = self.ctx.settings.gates
        record = compare(self.ref(m) if ref is None else ref, cand,
                         self.names[:_count(self.feeds[:m])], self.labels, s.metric_script)
        return gate_value(record, s.accuracy_target)


def _sensitivities(model: Any, qplan: Any, ctx: Context, found: list,
                   feeds: list[dict[str, np.ndarray]], fp32: Any,
                   n_samples: int, axes: dict[str, int], free_batch: bool
                   ) -> tuple[dict[str, float], int]:
    """Each region alone in INT8, the rest FP32: its output error, on a few samples (about
    one validation pass for all regions together), all through one switchable session.
    Returns (errors, samples used)."""
    switch, flags = switchable_model(model, qplan, ctx.amaxes, found, ctx.int8_weights)
    sess = io.session(switch)
    few = _first_rows(feeds, int(np.clip(n_samples / max(len(found), 1),
                                         *SENSITIVITY_SAMPLES)), exact=free_batch)
    few_ref = _stack(_runs(fp32, few), axes)
    errors = {}
    with bar("sensitivity", len(found)) as progress:
        for r in found:
            on = {f: np.array(x is r) for f, x in zip(flags, found)}
            errors[r.node] = output_error(few_ref, _stack(_runs(sess, few, on), axes))
            progress.advance(1)
    return errors, _count(few)


def _subset(data: Any, limit: int) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """The first `limit` samples (names, one per row) in batches of the data's batch size."""
    names: list[str] = []
    feeds: list[dict[str, np.ndarray]] = []
    pending: list[dict[str, np.ndarray]] = []
    for origin, feed in data.samples():
        if len(names) >= limit:
            break
        names += [origin] * rows(feed)
        pending.append(feed)
        if sum(rows(f) for f in pending) >= data.batch_size:
            feeds.append(concat(pending))
            pending = []
    if pending:
        feeds.append(concat(pending))
    return names, feeds


def _first_rows(feeds: list[dict[str, np.ndarray]], limit: int, exact: bool = False
                ) -> list[dict[str, np.ndarray]]:
    """Whole batches from the start until `limit` rows are covered (`exact`: the last one
    cut to `limit`, for a model whose batch size is free)."""
    out, n = [], 0
    for feed in feeds:
        if n >= limit:
            break
        if exact and n + rows(feed) > limit:
            feed = {k: v[:limit - n] if np.ndim(v) else v for k, v in feed.items()}
        out.append(feed)
        n += rows(feed)
    return out


def _same_shapes(feeds: list[dict[str, np.ndarray]]) -> bool:
    """Can the feeds be joined on axis 0 (equal shapes past it, e.g. one sequence length)?"""
    return all(np.shape(f[k])[1:] == np.shape(feeds[0][k])[1:] and np.ndim(f[k])
               for f in feeds for k in feeds[0])


def _one_batch(feed: dict[str, np.ndarray]) -> bool:
    """Do all of a feed's arrays have one axis-0 length (rows to join on), unlike an LSTM
    VAD's 32 windows beside its one state?"""
    return len({len(a) for a in feed.values() if np.ndim(a)}) <= 1


def _dynamic_batch(model: Any) -> bool:
    """Does every graph input take any number of rows on axis 0?"""
    inits = {i.name for i in model.graph.initializer}
    dims = [i.type.tensor_type.shape.dim for i in model.graph.input if i.name not in inits]
    return all(d and not d[0].HasField("dim_value") for d in dims)


def _count(feeds: list[dict[str, np.ndarray]]) -> int:
    return sum(rows(f) for f in feeds)


def _runs(sess: Any, feeds: list[dict[str, np.ndarray]],
          flags: dict[str, np.ndarray] | None = None) -> list[tuple[list[str], list]]:
    """Each feed's outputs, as (names, arrays)."""
    names = [o.name for o in sess.get_outputs()]
    return [(names, sess.run(names, {**feed, **(flags or {})})) for feed in feeds]


def _stack(runs: list[tuple[list[str], list]], axes: dict[str, int]) -> dict[str, np.ndarray]:
    """Runs joined per output along its batch axis, which then comes first."""
    names = runs[0][0]
    return {n: stack([r[1][k] for r in runs], axes.get(n, 0)) for k, n in enumerate(names)}
