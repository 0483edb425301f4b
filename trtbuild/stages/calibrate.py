"""Calibrate stage: thresholds for every tensor the Q/DQ plan needs, streamed over the
calibration data with ONNX Runtime (trtbuild.calib), written to out/calib.cache; or reused
from an existing TensorRT calibration cache that covers the model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..calib import cachefile, merge
from ..config import CalibSettings
from ..context import Context
from ..errors import TrtBuildError
from ..onnx import io
from ..onnx.inputs import model_inputs
from ..progress import bar
from ..quant.qdq import QuantPlan, plan
from ..records import CalibrateRecord
from ..report import Timer

log = logging.getLogger(__name__)
# SmoothQuant's statistics: one FP32 pass over the first calibration samples, until every
# activation has SMOOTH_ENOUGH rows (vit_b_16: 197 a sample) or SMOOTH_SAMPLES were read
SMOOTH_SAMPLES = 32
SMOOTH_ENOUGH = 2048
SMOOTH_ROWS = 512  # sampled input rows per activation its alpha is judged on


def required_tensors(model: Any, qplan: QuantPlan) -> list[str]:
    """Graph float inputs first (TensorRT asks for them), then the planned activations."""
    floats = [s.name for s in model_inputs(model) if s.dtype.kind == "f"]
    return floats + [t for t in qplan.activations if t not in floats]


def run(ctx: Context) -> CalibrateRecord:
    """Thresholds for the cleaned model's Q/DQ tensors -> ctx.int8.amaxes and out/calib.cache.

    Uses the given calibration cache when it covers every needed tensor; otherwise
    recalibrates from the data and says why. Raises TrtBuildError(2) when the model has
    nothing to quantize, or when neither cache nor data can provide thresholds.
    """
    s = ctx.settings.calib
    model = ctx.clean_model()
    qplan = plan(model)
    control_flow = [n.op_type for n in model.graph.node if io.subgraphs(n)]
    if not qplan.activations and not qplan.weights and not control_flow:
        raise TrtBuildError(f"{ctx.artifacts.clean}: nothing to quantize: no Conv, "
                            "ConvTranspose, Gemm, MatMul or pooling node with float inputs")
    record: dict[str, Any] = {"method": s.method, "plan_activations": len(qplan.activations),
                              "plan_weights": len(qplan.weights)}
    if control_flow:
        record["left_float"] = (f"{len(control_flow)} control-flow node(s) "
                                f"({', '.join(sorted(set(control_flow)))}): their subgraphs "
                                "stay in float; Q/DQ goes in the main graph only")
        log.warning("%s: %s", ctx.artifacts.clean, record["left_float"])
    amaxes = None
    if s.cache:  # with the SmoothQuant scales written beside it, for the graph they make
        found, why = _read_scales(smooth_file(s.cache), model, qplan)
        ctx.int8.smooth = found or {}
        if ctx.int8.smooth:
            model = smoothed_model(ctx)
            qplan = plan(model)
        amaxes = _from_cache(s, required_tensors(model, qplan), record) if not why else None
        if why:  # as a cache that lacks a tensor: recalibrate from --calib, else fail
            record["cache_status"] = why
            if not s.data:
                raise TrtBuildError(f"{smooth_file(s.cache)}: {why} and no --calib data "
                                    "was given")
            log.warning("%s: recalibrating: %s", smooth_file(s.cache), why)
        if amaxes is None:
            ctx.int8.smooth, ctx.int8.smoothed = {}, None
            model, qplan = ctx.clean_model(), plan(ctx.clean_model())
        elif ctx.int8.smooth:
            record["smoothquant"] = {"applied": True, "smoothed": len(ctx.int8.smooth),
                                     "source": str(smooth_file(s.cache))}
    if amaxes is None:
        # --calibrator trt: TensorRT calibrates the clean FP32 graph itself
        if (s.smoothquant == "auto" or s.equalize == "on") and s.data \
                and ctx.settings.engine.calibrator != "trt":
            model, qplan, record["smoothquant"] = _smooth(ctx, model, qplan)
        record.update(plan_activations=len(qplan.activations))
        amaxes = _calibrate(ctx, model, qplan, required_tensors(model, qplan), record)
    cache_path = ctx.out / "calib.cache"
    cachefile.write(cache_path, amaxes, s.method)
    _write_scales(smooth_file(cache_path), ctx.int8.smooth)
    ctx.artifacts.calib_cache = cache_path
    ctx.int8.amaxes = amaxes
    record.update(output=str(cache_path), tensors=len(amaxes))
    return CalibrateRecord.of(record)


def _calibrate(ctx: Context, model: Any, qplan: QuantPlan, needed: list[str],
               record: dict) -> dict[str, float]:
    s = ctx.settings.calib
    if not s.data:
        raise TrtBuildError(f"{s.cache}: calibration cache does not match this model "
                            f"({record['cache_status']}) and no --calib data was given")
    data = ctx.dataset(s.data)
    moments = None
    if s.weight_rounding == "gptq":  # the quantize stage's GPTQ statistics, in this pass
        from ..quant.rounding import Moments

        moments = Moments(model, qplan)
    with Timer() as t, bar("calibrating", len(data) or None) as progress:
        # sharded over workers only inside merge.sharding() (a Ray release), same thresholds
        result, shards = merge.calibrate(model, needed, data, s.method, s.percentile,
                                         progress.advance,
                                         (moments.taps, moments.add) if moments else None)
    ctx.int8.moments = moments
    if result.samples == 0:
        raise TrtBuildError(f"{s.data}: the data loader yielded no samples")
    if shards > 1:
        record["shards"] = shards
    record.update(result.record(), calib=str(s.data), calibrate_seconds=round(t.seconds, 3),
                  samples_per_second=round(result.samples / max(t.seconds, 1e-9), 1))
    return result.amaxes


def _smooth(ctx: Context, model: Any, qplan: QuantPlan) -> tuple[Any, QuantPlan, dict]:
    """--smoothquant auto (and --equalize on): each group's alpha chosen on sampled
    calibration rows (quant.smooth.choose; conv inputs: quant.equalize), the chosen s in
    ctx.int8.smooth; (the model to calibrate, its plan, the record's smoothquant entry)."""
    import time

    from onnx import numpy_helper

    from ..quant import equalize, smooth

    groups, convs = _targets(ctx, model, qplan)
    if not groups and not convs:
        return model, qplan, {"applied": False, "layers": 0}
    start = time.perf_counter()
    act_max, rows, samples = _channel_statistics(ctx, model, groups, convs)
    inits = {i.name: i for i in model.graph.initializer}
    chosen = []
    with bar("SmoothQuant alphas", len(groups) + len(convs)) as progress:
        for g in groups:
            ws = [numpy_helper.to_array(inits[layer.weight]) for layer in g.layers]
            chosen.append(smooth.choose(rows[g.activation], act_max[g.activation],
                                        [w if layer.axis == 0 else w.T
                                         for w, layer in zip(ws, g.layers)]))
            progress.advance(1)
        for c in convs:
            ws = [numpy_helper.to_array(inits[w]) for _, w in c.layers]
            x, a = rows[c.activation], act_max[c.activation]
            chosen.append(equalize.choose_depthwise(x, a, ws[0]) if c.depthwise else
                          smooth.choose(x, a, [w[:, :, 0, 0].T for w in ws], equalize.ALPHAS))
            progress.advance(1)
    every = [*groups, *convs]
    ctx.int8.smooth = {g.activation: c.s for g, c in zip(every, chosen) if c.alpha}
    smoothed = smoothed_model(ctx)
    alphas = [c.alpha for c in chosen]
    ratios = [c.error / c.error_plain for c in chosen if c.error_plain > 0]
    record = {"applied": bool(ctx.int8.smooth),
              "layers": sum(len(g.layers) for g in every), "activations": len(every),
              "smoothed": len(ctx.int8.smooth), "conv_inputs": len(convs),
              "conv_equalised": sum(c.activation in ctx.int8.smooth for c in convs),
              "alpha_median": float(np.median(alphas)),
              "error_ratio_median": round(float(np.median(ratios)), 4) if ratios else None,
              "samples": samples, "seconds": round(time.perf_counter() - start, 2)}
    return smoothed, plan(smoothed), record


def _targets(ctx: Context, model: Any, qplan: QuantPlan) -> tuple[list, list]:
    """(SmoothQuant's MatMul/Gemm groups with --smoothquant auto, the conv-input groups with
    --equalize on): what this run may smooth."""
    from ..quant import equalize, smooth

    s = ctx.settings.calib
    groups = smooth.targets(model, qplan) if s.smoothquant == "auto" else []
    convs = equalize.targets(model, qplan, {g.activation for g in groups}) \
        if s.equalize == "on" else []
    return groups, convs


def _named_targets(model: Any, qplan: QuantPlan, names: set[str]) -> tuple[list, list]:
    """Every group that scales from a file or the stage cache (`names`) may be for,
    whatever this run's settings: the conv-input groups only when `names` holds an
    activation no MatMul group reads."""
    from ..quant import equalize, smooth

    groups = smooth.targets(model, qplan)
    known = {g.activation for g in groups}
    return groups, equalize.targets(model, qplan, known) if names - known else []


def _channel_statistics(ctx: Context, model: Any, groups: list, convs: list
                        ) -> tuple[dict, dict, int]:
    """({activation: max |x| per channel}, {activation: <= SMOOTH_ROWS sampled rows}, samples)
    over the first calibration samples (SMOOTH_SAMPLES, SMOOTH_ENOUGH), in one ONNX Runtime
    pass. Conv inputs (NCHW) are sampled as their convs read them (equalize.sample_rows)."""
    from ..calib.stream import layer_inputs, reservoir
    from ..quant.equalize import sample_rows

    width = {g.activation: g.k for g in groups}
    conv_of = {c.activation: c for c in convs}
    source = ctx.settings.calib.data
    rng = np.random.default_rng(0)
    act_max = {n: np.zeros(k, np.float32) for n, k in {**width, **{
        c.activation: c.k for c in convs}}.items()}
    kept: dict[str, Any] = {}
    seen, samples = dict.fromkeys(act_max, 0), 0
    with bar("SmoothQuant statistics", None) as progress:
        for count, values in layer_inputs(model, {**width, **dict.fromkeys(conv_of)},
                                          ctx.dataset(source), ctx.artifacts.clean, source,
                                          SMOOTH_SAMPLES):
            for n, x in values.items():
                if n in conv_of:
                    act_max[n] = np.maximum(act_max[n], np.abs(x).max(axis=(0, 2, 3)))
                    x = sample_rows(conv_of[n], x, rng)
                else:
                    act_max[n] = np.maximum(act_max[n], np.abs(x).max(axis=0))
                kept[n] = reservoir(kept.get(n), x, seen[n], rng, SMOOTH_ROWS)
                seen[n] += len(x)
            samples += count
            progress.advance(count)
            if min(seen.values()) >= SMOOTH_ENOUGH:
                break
    if not samples:
        raise TrtBuildError(f"{source}: the data loader yielded no samples")
    return act_max, kept, samples


def smoothed_model(ctx: Context) -> Any:
    """The clean model with ctx.int8.smooth applied (built once), else the clean model:
    what calibrate, quantize and the sensitivity search put Q/DQ into."""
    if not ctx.int8.smooth:
        return ctx.clean_model()
    if ctx.int8.smoothed is None:
        from ..quant import equalize, smooth

        clean = ctx.clean_model()
        groups, convs = _named_targets(clean, plan(clean), set(ctx.int8.smooth))
        smoothed = smooth.apply(clean, groups, ctx.int8.smooth)
        if convs:
            smoothed = equalize.apply(smoothed, convs, ctx.int8.smooth)
        ctx.int8.smoothed = io.infer_shapes(smoothed)
    return ctx.int8.smoothed


def smooth_file(cache: Path) -> Path:
    """Where a calibration cache's SmoothQuant scales are: CACHE.smooth.json (the cache's
    thresholds are for the smoothed graph's tensors)."""
    return Path(f"{cache}.smooth.json")


def encode_scales(found: dict[str, np.ndarray]) -> bytes:
    """SmoothQuant scales as JSON (float32 -> float is exact), as written beside the cache
    and kept by the stage cache."""
    import json

    return json.dumps({k: v.tolist() for k, v in found.items()}).encode()


def decode_scales(data: bytes) -> dict[str, np.ndarray]:
    """What encode_scales wrote (trtbuild's own stage cache: not checked against a model)."""
    import json

    return {k: np.array(v, np.float32) for k, v in json.loads(data).items()}


def _write_scales(path: Path, found: dict[str, np.ndarray]) -> None:
    """The scales beside the cache, or no such file."""
    from ..files import write_bytes

    if found:
        write_bytes(path, encode_scales(found))
    else:  # nothing stale from an earlier run
        path.unlink(missing_ok=True)


def _read_scales(path: Path, model: Any, qplan: QuantPlan) -> tuple[dict | None, str | None]:
    """(the scales of a --calib-cache's CACHE.smooth.json, {} without one; or None and why
    they do not fit this model). Raises TrtBuildError naming the file when it is not JSON."""
    import json

    if not path.exists():
        return {}, None
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TrtBuildError(f"{path}: cannot read SmoothQuant scales ({e})")
    if not isinstance(raw, dict):
        raise TrtBuildError(f"{path}: not a JSON object of activation -> scales")
    widths = {g.activation: g.k for g in sum(_named_targets(model, qplan, set(raw)), [])}
    found = {}
    for name, values in raw.items():
        ok = isinstance(values, list) and all(isinstance(v, (int, float)) for v in values)
        s = np.array(values if ok else [], np.float32)
        if name not in widths or len(s) != widths[name] or not np.all(np.isfinite(s)) \
                or not np.all(s > 0):
            return None, (f"scales for '{name}' do not fit this model (a normalization "
                          "output feeding MatMul/Gemm weights or a conv input, "
                          f"{widths.get(name, '?')} positive numbers)")
        found[name] = s
    return found, None


def _from_cache(s: CalibSettings, needed: list[str], record: dict) -> dict | None:
    if not s.cache:
        return None
    cached = cachefile.read(s.cache)
    missing = [t for t in needed if t not in cached]
    if missing:
        record["cache_status"] = (f"{len(missing)} of {len(needed)} tensors missing, "
                                  f"e.g. '{missing[0]}'")
        if s.data:
            log.warning("%s: recalibrating: %s", s.cache, record["cache_status"])
        return None
    record.update(cache_status="reused", calib_cache=str(s.cache))
    return {t: cached[t] for t in needed}
