"""FP16 stage: BatchNormalization folded into convs, nodes FP16 cannot hold kept in FP32
(measured on samples: trtbuild.quant.fp16_range), the graph in float16
(trtbuild.quant.fp16), then its accuracy against the FP32 model checked on an emulation of
what an FP16 engine computes (every FP16 tensor rounded, overflow to inf), not on ONNX
Runtime's FP16 kernels, which compute in FP32 between casts and miss overflows. With an
--accuracy-target the FP16 model misses, the fewest nodes go back to FP32
(trtbuild.stages.fp16_target)."""

from __future__ import annotations

import logging
from typing import Any

from ..context import Context
from ..metrics import gate_value
from ..onnx import io
from ..passes import fold_batchnorm
from ..quant import fp16
from ..quant.emulate import emulate_typed
from ..quant.fp16_range import range_keeps
from ..records import Fp16Record
from . import fp16_target, validate

log = logging.getLogger(__name__)


def run(ctx: Context) -> Fp16Record:
    s = ctx.settings.fp16_options
    folded, n_folded = fold_batchnorm(ctx.clean_model())
    keeps = range_keeps(folded, s, ctx.probe_feeds())
    nodes = folded.graph.node
    auto = [{"node": nodes[k].name or f"#{k}", "op": nodes[k].op_type, "reason": why}
            for k, why in sorted(keeps.items())]
    if auto:
        log.info("%d nodes kept in FP32 by measured range", len(auto))
    record = _written_and_checked(ctx, folded, frozenset(keeps))
    target = ctx.settings.gates.accuracy_target
    if target is not None and not target.holds(gate_value(record, target)):
        keep_at, search = fp16_target.fallback(ctx, folded, s, frozenset(keeps))
        record = _written_and_checked(ctx, folded, keep_at)
        record["gate_failures"] += search.pop("gate_failures", [])
        record["target_search"] = search
    record.update(batchnorm_folded=n_folded, auto_fp32=auto)
    return Fp16Record.of(record)


def _written_and_checked(ctx: Context, folded: Any, keep_at: frozenset[int]) -> dict[str, Any]:
    """model.fp16.onnx converted with the nodes at `keep_at` in FP32, written, and checked."""
    model, info = fp16.convert(folded, ctx.settings.fp16_options, keep_at)
    out = ctx.out / "model.fp16.onnx"
    io.check_model(model, out, ours=True)
    io.save(model, out)
    ctx.artifacts.fp16 = out
    # the check runs what was written: the FP16 graph's own emulation (one emulator)
    try:
        check, how = emulate_typed(model), None
    except ValueError as e:  # an op shape inference cannot type: the file on ORT's kernels
        check, how = out, f"not emulated ({e}): ONNX Runtime's FP16 kernels, FP32 between casts"
        log.warning("%s: %s", out, how)
    del model  # written: not held beside the check's sessions
    record = validate.check(ctx, check, "fp16")
    record.update(info, output=str(out),
                  cpu_check=how or "FP16 emulation (FP16 tensors and weights rounded, overflow "
                                   "to inf) in ONNX Runtime, FP32 kernels")
    return record
