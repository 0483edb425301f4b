"""--calib-method auto: per tensor, the threshold of least quantization error, on a tensor
where TensorRT's entropy search clips (a SiLU output) and on a real model built around one."""

from __future__ import annotations

import numpy as np
import pytest

import trtbuild
from trtbuild.calib.observer import Histogram
from trtbuild.calib.thresholds import auto_amax, choose, entropy_amax, quant_mse


def silu_samples(n: int = 400_000, seed: int = 0) -> np.ndarray:
    """Detector-like SiLU output: pre-activations mostly negative, so the negative lobe's
    minimum (-0.278) leaves a spike in the |x| histogram below the positive tail."""
    x = np.random.default_rng(seed).normal(-2.0, 1.0, n).astype(np.float32)
    return x / (1 + np.exp(-x))


def fake_quant_mse(x: np.ndarray, amax: float) -> float:
    """The real error of symmetric INT8 with this amax, on the samples themselves."""
    step = amax / 127.0
    q = np.clip(np.round(x / step), -127, 127) * step
    return float(np.mean((q - x) ** 2))


def test_auto_avoids_the_entropy_clip_on_a_silu_histogram():
    x = silu_samples()
    h = Histogram()
    h.observe(x)
    ent = entropy_amax(h)
    found, method, candidates = auto_amax(h)
    assert ent < 0.35 < 2.5 < h.amax            # entropy stops at the lobe's spike
    assert method != "entropy" and found > 1.0  # auto keeps the positive tail
    assert set(candidates) >= {"entropy", "max", "percentile99.99"}
    # judged on the samples, not on the histogram estimate auto used
    assert fake_quant_mse(x, found) < fake_quant_mse(x, ent) / 10
    assert fake_quant_mse(x, found) <= fake_quant_mse(x, h.amax)
    # auto's pick is the least estimated error of all its candidates
    est = quant_mse(h, np.array(list(candidates.values())))
    assert quant_mse(h, np.array([found]))[0] <= est.min() * (1 + 1e-9)


def test_entropy_stays_entropy_and_auto_picks_max_where_nothing_clips():
    h = Histogram()
    h.observe(np.linspace(-1, 1, 10001, dtype=np.float32))  # uniform: any clip costs
    assert choose(h, "entropy", 99.99) == (entropy_amax(h), "entropy")
    found, method = choose(h, "auto", 99.99)
    assert found == pytest.approx(1.0, rel=0.02)


def silu_model(path):
    """Conv -> SiLU (Sigmoid * Mul) -> Conv, biased so most pre-activations are negative."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w1 = rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)
    b1 = np.full(16, -2.0, np.float32)
    w2 = rng.normal(0, 0.3, (8, 16, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["s1"]),
             helper.make_node("Mul", ["c1", "s1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(
        nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_auto_beats_entropy_on_a_silu_model(tmp_path):
    src = tmp_path / "silu.onnx"
    silu_model(src)
    rng = np.random.default_rng(2)
    for folder, n in (("calib", 16), ("val", 16)):
        (tmp_path / folder).mkdir()
        for k in range(n):
            np.save(tmp_path / folder / f"{k}.npy", rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32))
    cosine, records = {}, {}
    for method in ("entropy", "auto"):
        r = trtbuild.build(str(src), out=str(tmp_path / method), int8=True, target="onnx",
                           calib=str(tmp_path / "calib"), val=str(tmp_path / "val"),
                           calib_method=method)
        stages = {s["stage"]: s for s in r.report["stages"]}
        cosine[method] = stages["validate"]["outputs"]["y"]["cosine_mean"]
        records[method] = stages["calibrate"]
    assert cosine["auto"] > cosine["entropy"] + 0.01 and cosine["auto"] > 0.99
    per_tensor = records["auto"]["per_tensor"]
    assert per_tensor["a1"]["method"] != "entropy"
    assert per_tensor["a1"]["amax"] > 3 * records["entropy"]["per_tensor"]["a1"]["amax"]
    assert per_tensor["x"]["method"] == "max"  # graph inputs keep their max
