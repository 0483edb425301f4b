"""The streaming calibrator against a straightforward reference implementation."""

from __future__ import annotations

import numpy as np
import pytest

from trtbuild.calib.observer import BINS, Histogram
from trtbuild.calib.thresholds import entropy_amax, entropy_divergences, percentile_amax


def ref_quantize(h: np.ndarray, i: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """P and Q for candidate i, written as the spec reads (a loop over bins)."""
    h = h.astype(np.float64)
    p = h[:i].copy()
    p[i - 1] += h[i:].sum()
    q = np.zeros(i)
    level = [j * levels // i for j in range(i)]
    for lv in range(levels):
        members = [j for j in range(i) if level[j] == lv]
        nonzero = [j for j in members if h[j] > 0]
        for j in nonzero:
            q[j] = sum(h[k] for k in members) / len(nonzero)
    return p, q


def ref_divergences(h: np.ndarray, levels: int = 128) -> np.ndarray:
    out = []
    for i in range(levels, len(h) + 1):
        p, q = ref_quantize(h, i, levels)
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        out.append(np.inf if np.any(q[mask] == 0) else float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return np.array(out)


def ref_amax(values: np.ndarray, bins: int = 256, levels: int = 128) -> float:
    """Two-pass reference: exact max, then one histogram, then the loop search."""
    a = np.abs(values)
    rng = float(a.max())
    h = np.histogram(a, bins=bins, range=(0, rng))[0]
    h[0] = h[1]
    m = levels + int(np.argmin(ref_divergences(h, levels)))
    return min((m + 0.5) * rng / bins, rng)


def test_reference_reproduces_the_worked_example():
    h = np.array([1, 0, 2, 3, 5, 3, 1, 7])
    p, q = ref_quantize(h, 8, 2)
    np.testing.assert_array_equal(p, h)
    np.testing.assert_array_equal(q, [2, 0, 2, 2, 4, 4, 4, 4])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_divergences_equal_the_loop(seed):
    rng = np.random.default_rng(seed)
    h = np.histogram(np.abs(rng.standard_normal(20000)) ** (1 + seed), bins=400)[0]
    h[rng.integers(0, 400, 40)] = 0  # empty bins, including possibly the last-kept one
    fast, slow = entropy_divergences(h, 64), ref_divergences(h, 64)
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(slow))
    finite = np.isfinite(slow)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=0, atol=1e-10)


def test_streaming_histogram_equals_a_direct_histogram_after_growth():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.5, 1, 3, 2, 7)]
    h = Histogram()
    for b in batches:
        h.observe(b)
    allv = np.abs(np.concatenate(batches))
    assert h.amax == pytest.approx(float(allv.max()))
    assert h.range >= h.amax and h.counts.sum() == allv.size
    direct = np.histogram(allv, bins=BINS, range=(0, h.range))[0]
    # identical up to values that sit exactly on a bin edge (float rounding)
    assert np.abs(direct - h.counts).sum() <= 4


@pytest.mark.parametrize("dist", ["normal", "relu", "laplace"])
def test_streaming_entropy_threshold_matches_reference_within_one_bin(dist):
    rng = np.random.default_rng(3)
    x = {"normal": rng.standard_normal(60000), "relu": np.maximum(rng.standard_normal(60000), 0),
         "laplace": rng.laplace(size=60000)}[dist].astype(np.float32)
    h = Histogram(bins=256)
    for chunk in np.array_split(x, 6):
        h.observe(chunk)
    ours = entropy_amax(h, levels=128)
    # the reference histograms over the streamed range (a power-of-two multiple of the first
    # batch's max) so both search the same bins; one bin of tolerance
    a = np.abs(x)
    ref_h = np.histogram(a, bins=256, range=(0, h.range))[0]
    ref_h[0] = ref_h[1]
    m = 128 + int(np.argmin(ref_divergences(ref_h, 128)))
    ref = min((m + 0.5) * h.range / 256, float(a.max()))
    assert abs(ours - ref) <= h.bin_width
    assert 0 < ours <= float(a.max())
    assert abs(ref_amax(x) - ours) <= 0.1 * float(a.max())  # the two-pass variant is close


def test_sentinels_and_non_finite_values_do_not_set_the_range():
    h = Histogram()
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    h.observe(np.concatenate([x, [-np.inf, np.nan, -3.4e38]]).astype(np.float32))
    assert h.amax == pytest.approx(3.0) and h.ignored == 3
    assert entropy_amax(h) <= 3.0


def test_all_zero_then_data():
    h = Histogram()
    h.observe(np.zeros(100, np.float32))
    h.observe(np.full(10, 2.0, np.float32))
    assert h.counts[0] >= 100 and h.amax == 2.0 and h.counts.sum() == 110


def test_percentile():
    h = Histogram()
    h.observe(np.arange(1, 10001, dtype=np.float32))
    assert percentile_amax(h, 99.0) == pytest.approx(9900, rel=2e-3)
    assert percentile_amax(h, 100.0) == pytest.approx(10000)


def test_c_kernel_and_numpy_fallback_agree():
    from trtbuild.calib import observer

    if observer._hist is None:
        pytest.skip("the optional C kernel was not built (no compiler at install)")
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal(70001).astype(np.float32) * s for s in (1, 0.3, 4, 9)]
    batches[1][[3, 8, 13]] = [np.nan, -np.inf, 3.4e38]
    c, py = Histogram(use_c=True), Histogram(use_c=False)
    for b in batches:
        c.observe(b.copy())
        py.observe(b.copy())
    np.testing.assert_array_equal(c.counts, py.counts)
    assert (c.range, c.amax, c.ignored) == (py.range, py.amax, py.ignored) and c.ignored == 3


def _relu_model():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_a_wide_batch_runs_in_pieces_under_the_budget(monkeypatch):
    """One run's observed tensors stay under the budget (vit_b_16's 97 tensors at batch 16
    were 2.1 GB), sized from the model's shapes and then from what a run measured; batches
    that fit run whole (a smaller first batch changed entropy thresholds: the histograms
    grow their range with the batches); the thresholds are those of whole batches."""
    from types import SimpleNamespace

    from trtbuild.calib import stream
    from trtbuild.onnx import io

    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((8, 4)).astype(np.float32)} for _ in range(3)]
    data = SimpleNamespace(inputs=[SimpleNamespace(name="x")], batches=lambda: iter(feeds),
                           batch_size=8)

    def runs() -> tuple[list[int], float]:
        seen: list[int] = []
        found = stream.calibrate(_relu_model(), ["y"], data, "max", 99.99,
                                 extra=(["y"], lambda values, n: seen.append(n)))
        return seen, found.amaxes["y"]

    whole, amax = runs()
    assert whole == [8, 8, 8]
    monkeypatch.setattr(io, "RUN_BYTES", 3 * 4 * 4)  # three rows of y
    cut, amax_cut = runs()
    assert cut == [3, 3, 2] * 3 and amax_cut == amax
    data.batch_size = 1  # no stackable batch axis: a sample's axis 0 is never cut
    assert runs()[0] == [8, 8, 8]


def test_a_failing_histogram_thread_fails_calibration(monkeypatch):
    """An error in the thread that histograms a batch reaches the caller. It was printed and
    lost: calibration returned the batches before it (6 samples, amax 2.0 of 6.0) and that
    value would have gone into calib.cache (issue 19, finding 3)."""
    from types import SimpleNamespace

    import onnx
    from onnx import TensorProto, helper

    from trtbuild.calib import stream

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    feeds = [{"x": np.full((2, 4), k + 1, np.float32)} for k in range(3)]
    data = SimpleNamespace(inputs=[SimpleNamespace(name="x")], batches=lambda: iter(feeds))
    whole = stream.calibrate(model, ["y"], data, "max", 99.99)
    assert (whole.samples, whole.amaxes["y"]) == (6, pytest.approx(3.0, rel=0.02))

    real, seen = Histogram.observe, []

    def fails_third(self, x):
        seen.append(1)
        if len(seen) == 3:
            raise MemoryError("histogram of batch 3")
        return real(self, x)

    monkeypatch.setattr(Histogram, "observe", fails_third)
    with pytest.raises(MemoryError, match="batch 3"):
        stream.calibrate(model, ["y"], data, "max", 99.99)
