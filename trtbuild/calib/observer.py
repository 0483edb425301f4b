"""Streaming |x| observers: a running max and a 2048-bin histogram per tensor.

Memory per tensor is 2048 int64 counts and two floats, whatever the number of samples.
The per-element work runs in the small C extension `_hist` (one pass for the max, one for
the counts, GIL released) when it was built at install; otherwise in numpy, with the same
results.
"""

from __future__ import annotations

import numpy as np

try:
    from . import _hist
except ImportError:  # no C compiler at install time
    _hist = None

BINS = 2048
# Attention masks put -inf or about -3.4e38 into tensors; such sentinels are not data and
# must not set a range: values at or beyond this magnitude (and NaN) are counted and ignored.
SENTINEL = 1e30


class Histogram:
    """|x| histogram over [0, R) with `bins` bins; R grows by powers of two (bins merge
    pairwise), starting at the first non-zero batch's max. `max_only` keeps just the max."""

    def __init__(self, bins: int = BINS, max_only: bool = False, use_c: bool = True):
        self.bins, self.max_only = bins, max_only
        self.counts = np.zeros(bins, dtype=np.int64)
        self.range = 0.0
        self.amax = 0.0
        self.ignored = 0
        self._c = _hist if use_c else None

    def observe(self, x: np.ndarray, range_: float | None = None) -> None:
        """Add |x| (any shape) to the histogram. `range_`: the range a single-process run
        had after this batch (a shard's second pass, calib.merge), instead of growing from
        this batch's own max."""
        top, valid, a = self.absmax(x)
        if valid == 0:
            return
        if range_ is None:
            self.note(top, valid)
        else:  # the range comes from the whole set's schedule, not from this shard's data
            self.amax = max(self.amax, top)
            if range_ > self.range:
                self._grow(range_)
        if self.max_only:
            return
        if self.range == 0.0:
            self.counts[0] += valid
        elif self._c is not None:
            self._c.hist(a, self.counts, self.bins / self.range, SENTINEL)
        else:
            self.counts += _bincount(a, np.float32(self.bins / self.range), self.bins)

    def absmax(self, x: np.ndarray) -> tuple[float, int, np.ndarray]:
        """(max |x| below SENTINEL, values below it, the values to count); counts the
        sentinels in `ignored`."""
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if a.size == 0:
            return 0.0, 0, a
        if self._c is not None:
            top, bad = self._c.absmax(a, SENTINEL)
            self.ignored += bad
            return top, a.size - bad, a
        a = np.abs(a)
        top = float(a.max())
        bad = 0
        if not top < SENTINEL:  # also true for NaN
            keep = a < SENTINEL
            bad = int(a.size - keep.sum())
            a = a[keep]
            top = float(a.max()) if a.size else 0.0
        self.ignored += bad
        return top, a.size, a

    def note(self, top: float, valid: int) -> None:
        """A batch of `valid` values up to `top`: the max, and the range grown to hold it."""
        if valid == 0:
            return
        self.amax = max(self.amax, top)
        if top > self.range:
            self._grow(top)

    def _grow(self, top: float) -> None:
        if self.range == 0.0:  # first non-zero batch sets R; earlier zeros stay in bin 0
            self.range = top
            return
        while self.range < top:
            h = self.counts
            self.counts = np.concatenate([h[0::2] + h[1::2], np.zeros(self.bins // 2, np.int64)])
            self.range *= 2.0

    @property
    def bin_width(self) -> float:
        return self.range / self.bins


def _bincount(a: np.ndarray, factor: np.float32, bins: int, chunk: int = 1 << 16) -> np.ndarray:
    """Counts of floor(a * factor), a >= 0 (modified in place), in cache-sized chunks.
    Values landing on `bins` (|x| == R) go to the last bin."""
    counts = np.zeros(bins + 1, np.int64)
    idx = np.empty(min(chunk, a.size), np.intp)
    for start in range(0, a.size, chunk):
        part = a[start:start + chunk]
        np.multiply(part, factor, out=part)
        view = idx[: part.size]
        view[...] = part
        counts += np.bincount(view, minlength=bins + 1)
    counts[bins - 1] += counts[bins]
    return counts[:bins]
