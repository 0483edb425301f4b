"""Sensitivity stage (--accuracy-target): when the INT8 model misses the target on held-out
data, measure what each quantized region costs (trtbuild.quant.sensitivity), leave the
fewest regions in float until the target holds, and rewrite out/model.int8.onnx as that
mixed-precision model (INT8 Q/DQ where kept, the --high-precision type elsewhere).

Every step measures the model as written (FP16 parts emulated), in its own session: a
switchable one-session model was slower per sample (ONNX Runtime cannot fuse its Q/DQ
into INT8 kernels; YOLOv8n 2x, PP-OCRv4 rec 1.3x) and its FP16 decisions differed (rec
strings 0.94 against 0.905 as written).

The held-out samples (up to SEARCH_SAMPLES) are split: the search chooses on the first
half and its answer is measured once on the other half, which no choice saw; that value is
the one reported and gated (a value selected on the data it is reported on overstates
it). On the search half, the bisection estimates on the first ESTIMATE_SAMPLES samples;
its answer is confirmed on the whole half, and where it misses there the search goes on
with the estimates corrected by the gap. With fewer than 2 x HELD_MIN samples there is no
split, and the record says so.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from ..context import Context
from ..data import named_batches, read_labels, rows
from ..errors import TrtBuildError
from ..metrics import batch_axes, compare, feature_outputs, gate_value, stack
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
)
from ..records import Region, SensitivityRecord
from .quantize import base_model, correct_biases, with_float_parts, write_int8

log = logging.getLogger(__name__)
SEARCH_SAMPLES = 1000     # held-out samples the search's answers are measured on
ESTIMATE_SAMPLES = 64     # of those, what each bisection step measures
SENSITIVITY_SAMPLES = (2, 16)  # samples each region's sensitivity is measured on
HELD_MIN = 32             # samples each half needs for the search to be split


def run(ctx: Context) -> SensitivityRecord:
    t0 = time.perf_counter()
    target = ctx.settings.gates.accuracy_target
    model = base_model(ctx)
    qplan = plan(model)
    found = regions(model, qplan)
    data, labels_dir, label = ctx.eval_data()
    names, feeds = subset(data, SEARCH_SAMPLES)
    if not feeds:
        raise TrtBuildError(f"{label}: no validation samples for --accuracy-target")
    all_macs = count_macs(model, feeds[0], found)
    labels = read_labels(labels_dir) if labels_dir else None
    trial = _Trials(ctx, model, qplan, found, names, feeds, labels, batch_axes(model))
    part, head, held = trial.search, trial.head, trial.held
    spent = {"data and reference": time.perf_counter() - t0}
    t = time.perf_counter()
    runs = trial.runs(set(), trial.whole.feeds)
    before = trial.score(trial.whole, runs)
    spent["start"] = time.perf_counter() - t
    miss = not target.holds(before)  # only a miss pays for the sensitivity pass and the search
    start = trial.score(part, runs[:len(part.feeds)]) if miss and part is not trial.whole \
        else before
    head_start = trial.score(head, runs[:len(head.feeds)]) if miss and head is not part else None
    del runs  # all outputs of up to SEARCH_SAMPLES samples
    errors, measured_on = dict.fromkeys((r.node for r in found), 0.0), 0
    if miss:
        t = time.perf_counter()
        errors, measured_on = _sensitivities(trial, head)
        spent["sensitivities"] = time.perf_counter() - t
    order = ranking(found, errors)
    guide = Guide([sum(errors[n] for n in order[k:]) for k in range(len(order) + 1)],
                  target.value, trial.score(head, head.ref_runs)) if miss else None
    full = _timed(spent, "full", lambda f: trial.score(part, trial.runs(f, part.feeds)))
    if head is part:
        result = search(order, full, target.holds, start=start, guide=guide)
    else:
        estimate = _timed(spent, "estimates",
                          lambda f: trial.score(head, trial.runs(f, head.feeds)))
        result = search(order, estimate, target.holds, start=start, confirm=full, guide=guide,
                        start_estimate=head_start)
    fallen = set(result.fallen)
    confirmed = None  # on the half no choice saw: what is reported and gated
    if miss and held is not None:
        confirmed = _timed(spent, "held out", lambda f: trial.score(
            held, trial.runs(f, held.feeds)))(fallen)
    written = trial.write(fallen) if fallen else {}
    high = ctx.settings.calib.high_precision
    total = max(all_macs, sum(r.macs for r in found)) or 1
    kept = sum(r.macs for r in found if r.node not in fallen)
    rank = {n: k for k, n in enumerate(order)}
    record: dict[str, Any] = {
        "target": str(target), "metric": target.name, "val": label, "samples": len(names),
        "sensitivity_samples": measured_on, "before": before,
        "after": result.value if confirmed is None else confirmed,
        "met": result.met if confirmed is None else target.holds(confirmed),
        "searched_on": len(part.names) if miss else 0,
        "held_out": len(held.names) if miss and held is not None else 0,
        "search_value": result.value, "evaluations": len(result.steps),
        "seconds_in": {k: round(v, 2) for k, v in spent.items()},
        "steps": result.steps, "regions_total": len(found), "fallback_regions": len(fallen),
        "int8_mac_coverage": kept / total,
        "macs_outside_regions": total - sum(r.macs for r in found),
        "output": str(ctx.artifacts.int8),
        "model": {k: v for k, v in written.items() if k != "output"},
        "regions": [Region(node=r.node, op_type=r.op_type, macs=r.macs, mac_share=r.macs / total,
                           sensitivity=errors[r.node], rank=rank[r.node],
                           precision=high if r.node in fallen else "int8") for r in found]}
    if not result.met:
        log.warning("%s: %s not reached even with %d of %d regions in float (%.4f)",
                    ctx.artifacts.int8, target, len(fallen), len(found), result.value)
    elif confirmed is not None and not record["met"]:
        record["gate_failures"] = [held_out_miss(
            target, confirmed, held, result.value, part,
            f", {len(fallen)} of {len(found)} regions in float")]
    elif miss and held is None:
        log.warning("%s: only %d samples: the search's value is measured on the samples it "
                    "chose on (give %d or more to hold half out)", label, len(names),
                    2 * HELD_MIN)
    return SensitivityRecord.of(record)


class Part:
    """Held-out feeds, their sample names and FP32 outputs, as run (per feed); `ref`, those
    outputs stacked, is kept for a part measured often (the estimates') and otherwise
    stacked anew at each use (as large as every output on every sample)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], names: list[str], ref_runs: list,
                 axes: dict[str, int], keep: bool = False):
        self.feeds, self.names, self.ref_runs = feeds, names, ref_runs
        self.axes, self._ref = axes, stacked(ref_runs, axes) if keep else None

    def ref(self) -> dict[str, np.ndarray]:
        return self._ref if self._ref is not None else stacked(self.ref_runs, self.axes)


def halves(whole: Part) -> tuple[Part, Part | None]:
    """(the part a search chooses on, the held-out rest): whole batches, about half the
    samples each; (whole, None) when either half would hold fewer than HELD_MIN samples."""
    n = row_count(whole.feeds)
    k = len(first_rows(whole.feeds, n // 2))
    m = row_count(whole.feeds[:k])
    if min(m, n - m) < HELD_MIN:
        return whole, None
    return (Part(whole.feeds[:k], whole.names[:m], whole.ref_runs[:k], whole.axes),
            Part(whole.feeds[k:], whole.names[m:], whole.ref_runs[k:], whole.axes))


def held_out_miss(target: Any, confirmed: float, held: Part, value: float, chosen: Part,
                  extra: str = "") -> str:
    """The gate failure of an answer that met the target on the samples a search chose on
    but misses it on the held-out ones."""
    return (f"{target}: {confirmed:.4f} on the {len(held.names)} held-out samples the search "
            f"did not choose on ({value:.4f} on the {len(chosen.names)} it chose on{extra})")


class _Trials:
    """The target's value for a choice of regions in float, on held-out samples."""

    def __init__(self, ctx: Context, model: Any, qplan: Any, found: list, names: list[str],
                 feeds: list[dict[str, np.ndarray]], labels: Any, axes: dict[str, int]):
        self.ctx, self.model, self.qplan, self.found = ctx, model, qplan, found
        self.labels, self.axes, self.features = labels, axes, feature_outputs(model)
        self.fp32 = io.session(model)
        self.free_batch = dynamic_batch(model)  # any number of rows on axis 0
        # per feed, as run: a feed's outputs need not have one row per input row (an LSTM
        # VAD's state has one per feed, its probabilities one per window)
        ref_runs = run_feeds(self.fp32, feeds)
        self.whole = Part(feeds, names, ref_runs, axes)
        self.search, self.held = halves(self.whole)  # what the search chooses on; the rest
        self.head = self.search
        if len(self.search.names) >= 2 * ESTIMATE_SAMPLES:  # estimates on a few, answers on all
            first = first_rows(self.search.feeds, ESTIMATE_SAMPLES)
            self.head = Part(first, names[:row_count(first)], ref_runs[:len(first)], axes, True)
        self._last: tuple | None = None  # (fallen, Q/DQ model, float parts, session)
        self._done: tuple | None = None  # (fallen, feeds, their runs): the last estimate's

    def qdq(self, fallen: set[str]) -> Any:
        return insert_qdq(self.model, without(self.qplan, fallen), self.ctx.int8.amaxes,
                          self.ctx.int8.weights)

    def runs(self, fallen: set[str], feeds: list[dict[str, np.ndarray]]) -> list:
        """The outputs of the model as the validate stage runs it: the real Q/DQ graph, its
        float parts FP16-emulated unless --high-precision fp32 (on PP-OCRv4 rec
        strings_equal moved by 0.035 between the two), in a new session (kept for the next
        call with the same choice). With nothing in float that is the quantize stage's
        model, already converted, unless its biases were corrected: the search measures
        every choice alike, uncorrected, and the answer is corrected when written."""
        ctx, key = self.ctx, frozenset(fallen)
        if self._last is None or self._last[0] != key:
            corrected = ctx.settings.calib.bias_correction == "on"
            if fallen or ctx.int8.check is None or corrected:
                qdq = self.qdq(fallen)
                floats = with_float_parts(ctx, qdq)
                self._last = key, qdq, floats, io.session(floats[1])
            else:
                self._last = key, None, None, io.session(ctx.int8.check)
        done: list = []  # a confirmation after an estimate runs only the other feeds
        if self._done and self._done[0] == key and len(self._done[1]) <= len(feeds) and all(
                a is b for a, b in zip(self._done[1], feeds[:len(self._done[1])])):
            done = self._done[2]
        out = done + run_feeds(self._last[3], feeds[len(done):])
        self._done = key, feeds, out
        return out

    def write(self, fallen: set[str]) -> dict[str, Any]:
        """Write the model with `fallen` in float (as last measured, when it was)."""
        if self._last and self._last[0] == frozenset(fallen) and self._last[1] is not None:
            qdq, parts = self._last[1], self._last[2]
        else:
            qdq = self.qdq(fallen)
            parts = with_float_parts(self.ctx, qdq)
        corrected = correct_biases(self.ctx, parts)  # measured above without it
        return {**write_int8(self.ctx, qdq, parts), "bias_correction": corrected}

    def score(self, part: Part, runs: list) -> float:
        """The target's value of `runs` (of `part`'s feeds) against the FP32 outputs."""
        s = self.ctx.settings.gates
        record = compare(part.ref(), stacked(runs, self.axes), part.names, self.labels,
                         s.metric_script, self.features)
        return gate_value(record, s.accuracy_target)


def _timed(spent: dict[str, float], key: str, fn: Callable[[set[str]], float]
           ) -> Callable[[set[str]], float]:
    """`fn`, its seconds added to spent[key]."""
    def timed(fallen: set[str]) -> float:
        t = time.perf_counter()
        try:
            return fn(fallen)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
    return timed


def _sensitivities(trial: _Trials, part: Part) -> tuple[dict[str, float], int]:
    """Each region alone in INT8, the rest FP32: its output error, on a few of `part`'s
    samples (about one pass over them for all regions together), all through one
    switchable session. Returns (errors, samples used)."""
    ctx, found, axes = trial.ctx, trial.found, trial.axes
    switch, flags = switchable_model(trial.model, trial.qplan, ctx.int8.amaxes, found,
                                     ctx.int8.weights)
    sess = io.session(switch)
    few = first_rows(part.feeds, int(np.clip(len(part.names) / max(len(found), 1),
                                              *SENSITIVITY_SAMPLES)), exact=trial.free_batch)
    if all(a is b for a, b in zip(few, part.feeds)):  # whole feeds: their FP32 outputs known
        few_ref = stacked(part.ref_runs[:len(few)], axes)
    else:
        few_ref = stacked(run_feeds(trial.fp32, few), axes)
    errors = {}
    with bar("sensitivity", len(found)) as progress:
        for r in found:
            on = {f: np.array(x is r) for f, x in zip(flags, found)}
            errors[r.node] = output_error(few_ref, stacked(run_feeds(sess, few, on), axes))
            progress.advance(1)
    return errors, row_count(few)


def subset(data: Any, limit: int) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """The first `limit` samples (names, one per row) in batches of the data's batch size
    (samples of other shapes in batches of their own)."""
    names: list[str] = []
    feeds: list[dict[str, np.ndarray]] = []
    for batch_names, feed in named_batches(data, limit):
        names += batch_names
        feeds.append(feed)
    return names, feeds


def first_rows(feeds: list[dict[str, np.ndarray]], limit: int, exact: bool = False
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


def dynamic_batch(model: Any) -> bool:
    """Does every graph input take any number of rows on axis 0?"""
    inits = {i.name for i in model.graph.initializer}
    dims = [i.type.tensor_type.shape.dim for i in model.graph.input if i.name not in inits]
    return all(d and not d[0].HasField("dim_value") for d in dims)


def row_count(feeds: list[dict[str, np.ndarray]]) -> int:
    return sum(rows(f) for f in feeds)


def run_feeds(sess: Any, feeds: list[dict[str, np.ndarray]],
          flags: dict[str, np.ndarray] | None = None) -> list[tuple[list[str], list]]:
    """Each feed's outputs, as (names, arrays)."""
    names = [o.name for o in sess.get_outputs()]
    return [(names, sess.run(names, {**feed, **(flags or {})})) for feed in feeds]


def stacked(runs: list[tuple[list[str], list]], axes: dict[str, int]) -> dict[str, np.ndarray]:
    """Runs joined per output along its batch axis, which then comes first."""
    names = runs[0][0]
    return {n: stack([r[1][k] for r in runs], axes.get(n, 0)) for k, n in enumerate(names)}
