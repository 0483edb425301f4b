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

    def __init__(self, bins: int = BINS):
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.range = 0.0
        self.amax = 0.0
        self.ignored = 0

    def observe(self, x: np.ndarray) -> None:
        a = np.abs(x.reshape(-1).astype(np.float32, copy=False))
        big = a >= SENTINEL
        if big.any() or not np.isfinite(a).all():
            bad = big | ~np.isfinite(a)
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
        np.multiply(a, np.float32(self.bins / self.range), out=a)
        idx = a.astype(np.intp)
        np.minimum(idx, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)

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
