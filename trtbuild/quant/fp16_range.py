"""What FP16 cannot hold, found before conversion: BatchNormalization folded into the
preceding Conv (a running_var of 9.8e7 is no FP16 number, its folded scale is), then the
nodes whose measured outputs or weights leave FP16's range or precision kept in FP32.

ModelOpt's AutoCast keeps nodes by fixed thresholds (|I/O| > 512, initializers > 65504);
here each node is judged by the error FP16 rounding gives its own output and weights on
real samples: overflow (any |y| > 65504), or a relative rounding error over MAX_REL_ERROR
(values lost to FP16's subnormal range).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..calib.stream import observed_model
from ..config import Fp16Settings
from ..onnx import io
from .fp16 import half_nodes

FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).tiny)  # 6.1e-5: below it FP16 loses mantissa bits
MAX_REL_ERROR = 1e-2  # FP16 rounding alone is ~5e-4 relative; 20x that means lost values


def range_keeps(model: Any, s: Fp16Settings, feeds: list[dict[str, np.ndarray]],
                known: dict[str, str | None] | None = None) -> dict[int, str]:
    """{node position: why} for the nodes FP16 would run that must stay FP32, measured by
    running the FP32 model on `feeds` with every such node's float outputs observed.
    `known`: tensor and weight name -> why FP16 cannot hold it (None: it can), filled in
    here; names already in it are not measured again (the sensitivity search's models
    share their tensors and differ only by INT8 noise on them)."""
    from onnx import numpy_helper

    g = model.graph
    floats = io.float_tensors(model)
    half = half_nodes(g, floats, s)
    inits = {i.name: i for i in g.initializer}
    known = {} if known is None else known
    keeps: dict[int, str] = {}
    for k, n in enumerate(g.node):  # weights: measured once, no data needed
        for name in n.input:
            if half[k] and name in inits and name in floats:
                if name not in known:
                    known[name] = _fp16_error(numpy_helper.to_array(inits[name]))
                reason = known[name]
                if reason:
                    keeps[k] = f"weight {name}: {reason}"
    # every float tensor an FP16 node writes or reads (inputs from FP32 nodes and graph
    # inputs are cast to FP16 on the way in: an overflow there is as fatal)
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(g.node):
        if half[k]:
            for i in n.input:
                if i in floats and i not in inits:
                    readers.setdefault(i, []).append(k)
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    watched = {o: producer.get(o) for o in readers}
    watched.update({o: k for k, n in enumerate(g.node) if half[k] and k not in keeps
                    for o in n.output if o in floats})
    names = [t for t in watched if t not in known]
    if names and feeds:
        found: dict[str, str | None] = dict.fromkeys(names)
        for group in io.output_groups(model, names, io.run_budget(model)):
            sess = io.session(observed_model(model, group))
            for feed in feeds:
                for name, y in zip(group, io.run(sess, feed, "FP16 range probe")):
                    if found[name] is None:
                        found[name] = _fp16_error(np.asarray(y))
            del sess
        known.update(found)  # only once every sample has run
    worst = {t: known[t] for t in watched if known.get(t)}
    for name, reason in worst.items():  # the writer and every FP16 reader stay FP32
        if watched[name] is not None and half[watched[name]]:
            keeps.setdefault(watched[name], f"output {name}: {reason}")
        for k in readers.get(name, []):
            keeps.setdefault(k, f"input {name}: {reason}")
    return keeps


def _fp16_error(x: np.ndarray) -> str | None:
    """Why FP16 cannot hold `x` (overflow, or relative rounding error), or None."""
    x = np.asarray(x).ravel()
    x = x if x.dtype == np.float32 else x.astype(np.float64)
    finite = x if np.isfinite(x).all() else x[np.isfinite(x)]
    if finite.size == 0:
        return None
    mag = np.abs(finite)
    top = float(mag.max())
    if top > FP16_MAX:
        return f"|x| up to {top:.3g} > {FP16_MAX:.0f}"
    norm = float(np.linalg.norm(finite))
    if norm == 0:
        return None
    # FP16's normal numbers round to a relative 2^-11; only values below its smallest
    # normal can add more, so when they are few the answer needs no rounding
    small = float(np.linalg.norm(finite[mag < FP16_TINY]))
    if small <= (MAX_REL_ERROR - 2.0 ** -11) * norm:
        return None
    finite = finite.astype(np.float64)
    rel = float(np.linalg.norm(finite.astype(np.float16).astype(np.float64) - finite)) / norm
    return f"FP16 rounding error {rel:.2g} of its norm" if rel > MAX_REL_ERROR else None
