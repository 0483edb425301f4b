"""Empirical bias correction (Nagel et al., "Data-Free Quantization", 2019, section 4.2;
AIMET's empirical bias correction): quantization shifts the mean of a layer's output, and the
shift adds up layer after layer. For each Conv/ConvTranspose/Gemm with a constant bias, in
graph order, the bias absorbs the shift seen on calibration data:

    b_k  <-  b_k + E[y_k(FP32 model)] - E[y_k(quantized model, biases 1..k-1 corrected)]

with E the mean over samples and every axis but the channel axis (1 for Conv, the last for
Gemm). Sequential, because correcting layer k changes what every later layer sees; all
layers at once over-corrects (on PP-OCRv4 rec it destroyed the output). The graph keeps its
shape: only bias values change.

`corrections` is a pure function of the two models and the samples: the biases of the
candidate become inputs of one ONNX Runtime session (no session per layer); each step is one
pass of the whole model over the samples (ONNX Runtime runs every node whatever is fetched),
so the cost is one inference pass over BIAS_SAMPLES per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

TARGET_OPS = ("Conv", "ConvTranspose", "Gemm")
BIAS_SAMPLES = 16  # calibration samples the means are taken over (PP-OCRv4 rec: 8 did 0.775,
                   # 16 0.80, 32 0.785 on lines of another generator; cost grows with it)
# At most this many layers, the first in graph order: a bound on the cost (one pass each).
# Fewer was not better: PP-OCRv4 rec moved by -11 to +10 points with its first 2, 4, 8 or
# 16 of 32 layers on lines of other generators, depending on the calibration draw.
BIAS_LAYERS = 200


@dataclass(frozen=True)
class Target:
    node: str       # node name (the same in the FP32 model and the quantized one)
    output: str     # its output tensor in the model targets() read
    bias: str       # its bias initializer there
    axis: int       # channel axis of the output


def targets(model: Any) -> list[Target]:
    """Conv/ConvTranspose/Gemm nodes of `model` with a 1-D initializer bias of their own,
    in graph order (a Gemm only with beta 1: its C is added as it is)."""
    from onnx import helper

    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    found = []
    for n in model.graph.node:
        if n.op_type not in TARGET_OPS or len(n.input) < 3 or n.input[2] not in inits:
            continue
        if uses[n.input[2]] > 1:  # a bias shared by layers cannot absorb one layer's shift
            continue
        if len(inits[n.input[2]].dims) != 1:
            continue
        if n.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("beta", 1.0) != 1.0:
                continue
        found.append(Target(n.name, n.output[0], n.input[2],
                            -1 if n.op_type == "Gemm" else 1))
    return found


def channel_means(x: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """(sum over every axis but `axis`, count of values per channel)."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    flat = x.reshape(-1, x.shape[-1])
    return flat.sum(axis=0), flat.shape[0]


def _means(runs: list[list[np.ndarray]], axes: list[int]) -> list[np.ndarray]:
    """Per output k, its channel means over every run (one run: the outputs of one feed)."""
    sums: list = [None] * len(axes)
    counts = [0] * len(axes)
    for outs in runs:
        for k, (x, axis) in enumerate(zip(outs, axes)):
            s, c = channel_means(x, axis)
            sums[k] = s if sums[k] is None else sums[k] + s
            counts[k] += c
    return [s / c for s, c in zip(sums, counts)]


@dataclass
class Corrected:
    biases: dict[str, np.ndarray]  # node name -> new bias (float64)
    errors: list[float]            # output error after correcting 0, 1, ... layers
    kept: int                      # layers corrected


def corrections(candidate: Any, reference: Any, feeds: list[dict],
                session: Callable[[bytes], Any],
                on_step: Callable[[int], None] | None = None,
                layers: int = BIAS_LAYERS) -> Corrected:
    """Sequential correction of the first `layers` targets in graph order, with the output
    error (_error, against the reference on `feeds`) before each step and after the last:
    each step's pass yields it beside the layer's means.
    `candidate`: the quantized model as the engine computes it (FP16 parts emulated);
    `reference`: the FP32 model, its nodes named as the candidate's (the conversions keep
    node names, not always tensor names), its graph outputs named as the candidate's;
    `session(bytes)`: an ONNX Runtime session for a serialized model."""
    import onnx
    from onnx import numpy_helper

    from ..calib.stream import observed_model

    outputs = {n.name: n.output[0] for n in reference.graph.node if n.name}
    found = [t for t in targets(candidate) if t.node in outputs][:layers]
    if not found:
        return Corrected({}, [], 0)
    finals = [o.name for o in reference.graph.output]
    names = [outputs[t.node] for t in found] + finals
    ref_sess = session(observed_model(reference, names))
    ref_runs = [ref_sess.run(names, f) for f in feeds]
    want = _means([r[:len(found)] for r in ref_runs], [t.axis for t in found])
    ref_finals = [r[len(found):] for r in ref_runs]

    cand = observed_model(candidate, [t.output for t in found] + finals)  # a copy to edit
    inits = {i.name: i for i in cand.graph.initializer}
    biases = {t.bias: numpy_helper.to_array(inits[t.bias]).copy() for t in found}
    kept_inits = [i for i in cand.graph.initializer if i.name not in biases]
    del cand.graph.initializer[:]
    cand.graph.initializer.extend(kept_inits)
    for name, value in biases.items():  # biases become inputs: one session for every step
        cand.graph.input.append(onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
    sess = session(cand)
    errors: list[float] = []

    def step(part: list[Target]) -> list[np.ndarray]:
        runs = [sess.run([t.output for t in part] + finals, {**feed, **biases})
                for feed in feeds]
        errors.append(_error(ref_finals, [r[len(part):] for r in runs]))
        return _means([r[:len(part)] for r in runs], [t.axis for t in part])

    for t, w in zip(found, want):  # one at a time: in pairs, PP-OCRv4 rec lost 3-6 points,
        got = step([t])[0]         # in threes all
        b = biases[t.bias]
        biases[t.bias] = (b.astype(np.float64) + (w - got)).astype(b.dtype)
        if on_step:
            on_step(1)
    step([])  # the error with every layer corrected
    # every layer is kept: the prefix of least output error on these samples chose 2 of
    # PP-OCRv4 rec's 8 and lost 11 points of strings on other lines (the error on 16
    # samples does not rank prefixes by task); the errors are recorded to show the trend
    return Corrected({t.node: biases[t.bias].astype(np.float64) for t in found}, errors,
                     len(found))


def _error(ref: list[list], cand: list[list]) -> float:
    """Mean over outputs (and feeds) of the squared error divided by the reference's mean
    square: comparable across outputs of any scale."""
    errors = []
    for r_outs, c_outs in zip(ref, cand):
        for r, c in zip(r_outs, c_outs):
            r, c = np.asarray(r, np.float64), np.asarray(c, np.float64)
            if r.shape == c.shape and r.size:
                errors.append(float(np.mean((r - c) ** 2) / (np.mean(r ** 2) or 1.0)))
    return float(np.mean(errors)) if errors else 0.0


def apply(model: Any, new: dict[str, np.ndarray]) -> int:
    """Write corrections() into `model` (the written FP16/FP32 graph or its check): each named
    node's bias initializer, in its own dtype. Returns how many changed."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done = 0
    for n in model.graph.node:
        if n.name in new and len(n.input) > 2 and n.input[2] in inits:
            old = inits[n.input[2]]
            dtype = numpy_helper.to_array(old).dtype
            old.CopyFrom(numpy_helper.from_array(new[n.name].astype(dtype), old.name))
            done += 1
    return done
