"""Calibration sharded over workers, with exactly the thresholds of one process.

One process (stream.calibrate) bins each batch into a histogram whose range R has grown to
hold every batch so far: R0 is the first non-zero batch's max, then R doubles (bins merge
pairwise). Where a value lands depends on R at its batch (a value at R sits in the last
bin; after a doubling it would land in the middle one), so shards cannot bin on their own.
Two passes over the same batches (shard i of N takes batches i, i+N, ...):

1. `tops`: each shard returns per batch and tensor (max |x|, values, sentinels): small;
2. `schedule` replays the single process's range growth from those, with the same code
   (Histogram.note), and `counts` bins each shard's batches at exactly the range the single
   process had after that batch (Histogram.observe(x, range_));
3. `merge` brings each shard's histogram to the final range with the same pairwise merges
   and adds the integer counts: counts, range, max and sentinels equal the single
   process's, and so does every threshold (stream.result, the same code).

It costs two inference passes, spread over N workers: worth it for large sets on several
machines. `run` maps a shard function over argument tuples: `local_map` here (tests), Ray
tasks in a release (trtbuild.release.ray_backend); `sharding()` installs one for
`calibrate`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..data import Dataset, rows
from .observer import Histogram
from .stream import CalibResult, observed_model, result

Map = Callable[[Callable[..., Any], list[tuple]], list[Any]]
Tops = dict[int, tuple[int, list[tuple[float, int, int]]]]  # batch -> (rows, per tensor)
MAX_SHARDS = 64


@dataclass(frozen=True)
class Sharding:
    run: Map
    shard_samples: int  # sets with more samples than this are split into shards of this size


_active: Sharding | None = None  # set by sharding() for the calibrations inside it


def local_map(fn: Callable[..., Any], args: list[tuple]) -> list[Any]:
    return [fn(*a) for a in args]


@contextlib.contextmanager
def sharding(run: Map, shard_samples: int) -> Iterator[None]:
    """Inside: `calibrate` shards sets of more than `shard_samples` samples over `run`."""
    global _active
    before, _active = _active, Sharding(run, shard_samples)
    try:
        yield
    finally:
        _active = before


def calibrate(model: Any, tensors: list[str], data: Dataset, method: str, percentile: float,
              progress: Callable[[int], None] | None = None, extra: Any = None
              ) -> tuple[CalibResult, int]:
    """(result, shards): stream.calibrate in this process, or sharded when `sharding()` is
    active and the set is larger than its shard size (a loader script's size is not known
    up front: never sharded). `extra` (stream.calibrate's) is served in one process only."""
    from .stream import calibrate as single

    s = _active
    if s is None or len(data) <= s.shard_samples:
        return single(model, tensors, data, method, percentile, progress, extra=extra), 1
    n = min(MAX_SHARDS, math.ceil(len(data) / s.shard_samples))
    found = sharded(model, tensors, data, method, percentile, n, s.run)
    if progress:
        progress(found.samples)
    return found, n


def sharded(model: Any, tensors: list[str], data: Dataset, method: str, percentile: float,
            shards: int, run: Map = local_map) -> CalibResult:
    """stream.calibrate's result over `shards` shards run by `run`, bit for bit where the
    single process runs its batches whole (it cuts those whose observed tensors pass
    io.run_budget, 2 GB; the shards do not, and a histogram's bins follow its batches)."""
    from ..errors import TrtBuildError

    blob = observed_model(model, tensors).SerializeToString()
    found: Tops = {}
    for part in run(tops, [(blob, tensors, data, i, shards) for i in range(shards)]):
        found.update(part)
    if not found:
        raise TrtBuildError(f"{data.folder or data.script}: the data loader yielded no samples")
    hists, ranges = schedule(found, len(tensors))
    inputs = {i.name for i in data.inputs}
    binned = [k for k, t in enumerate(tensors) if t not in inputs]
    if binned:
        args = [(blob, tensors, binned, data, i, shards,
                 {b: [r[k] for k in binned] for b, r in ranges.items() if b % shards == i})
                for i in range(shards)]
        parts = run(counts, args)
        for j, k in enumerate(binned):
            merge(hists[k], [part[j] for part in parts])
    samples = sum(n for n, _ in found.values())
    return result(dict(zip(tensors, hists)), tensors, inputs, method, percentile, samples)


def schedule(found: Tops, n: int) -> tuple[list[Histogram], dict[int, list[float]]]:
    """Per tensor the single process's max, sentinels and final range, and per batch the
    range each tensor had after it."""
    hists = [Histogram(max_only=True) for _ in range(n)]
    ranges: dict[int, list[float]] = {}
    for b in sorted(found):
        for h, (top, valid, bad) in zip(hists, found[b][1]):
            h.ignored += bad
            h.note(top, valid)
        ranges[b] = [h.range for h in hists]
    return hists, ranges


def merge(into: Histogram, parts: list[tuple[np.ndarray, float]]) -> None:
    """Add shard histograms (counts, range) binned on `into`'s schedule: each is merged up
    to `into.range` pairwise, as the single process's doublings merged it."""
    into.max_only = False
    for c, r in parts:
        h = Histogram(into.bins)
        h.counts, h.range = np.array(c, np.int64), r
        if into.range > h.range:
            h._grow(into.range)
        if h.range != into.range:
            raise AssertionError(f"shard range {h.range} is not on the schedule {into.range}")
        into.counts += h.counts


# --- what each shard runs (in a worker process) -----------------------------------------

def _batches(data: Dataset, index: int, shards: int) -> Iterator[tuple[int, dict]]:
    """This shard's batches in order: every `shards`-th, from `index` (all are read, only
    these are run)."""
    for b, feed in enumerate(data.batches()):
        if b % shards == index:
            yield b, feed


def _session(blob: bytes) -> Any:
    import onnx

    from ..onnx import io

    return io.session(onnx.load_model_from_string(blob))


def tops(blob: bytes, tensors: list[str], data: Dataset, index: int, shards: int) -> Tops:
    """Pass 1: per batch of this shard, (rows, [(max |x|, values, sentinels) per tensor])."""
    sess = _session(blob)
    found: Tops = {}
    for b, feed in _batches(data, index, shards):
        per = []
        for x in sess.run(tensors, feed):
            h = Histogram(max_only=True)
            top, valid, _ = h.absmax(x)
            per.append((top, valid, h.ignored))
        found[b] = (rows(feed), per)
    return found


def counts(blob: bytes, tensors: list[str], binned: list[int], data: Dataset, index: int,
           shards: int, ranges: dict[int, list[float]]) -> list[tuple[np.ndarray, float]]:
    """Pass 2: this shard's histograms of the `binned` tensors, each batch binned at the
    range `ranges[batch]` the single process had: [(counts, range)] in `binned` order."""
    sess = _session(blob)
    names = [tensors[k] for k in binned]
    hists = [Histogram() for _ in binned]
    for b, feed in _batches(data, index, shards):
        for h, x, r in zip(hists, sess.run(names, feed), ranges[b]):
            h.observe(x, range_=r)
    return [(h.counts, h.range) for h in hists]
