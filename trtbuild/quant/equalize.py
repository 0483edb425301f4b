"""Activation equalisation of conv inputs: SmoothQuant's per-channel migration (quant.smooth)
for the inputs of pointwise (1x1, group 1) and depthwise Convs.

For a conv y = W * x whose input x [N, C, H, W] is quantized per tensor and whose weight is
quantized per output channel, and any s > 0 of length C,

    y = (diag(s) W) * (x / s)     (W's input-channel axis scaled: axis 1 pointwise, 0 depthwise)

so a channel whose range is far above the others (PP-OCR's learnable-affine hardswish outputs:
per-channel maxima 0.24-9.3 under one scale) stops setting the INT8 step of all of them.
For a depthwise conv each output channel reads one input channel, so its per-channel weight
quantization is unchanged by s and alpha = 1 equalises the input outright; for a pointwise
conv s trades the input's error against the weights' as in SmoothQuant. The alpha of each
input is chosen, as quant.smooth.choose does, by the least W8A8 output error on sampled
calibration rows (pixels; patches for a depthwise conv), alpha 0 included.

1/s goes into the constants of the nodes that produce x (fold_chain: a Mul/Add affine with
constants, a BatchNormalization, or a Conv through Relu, i.e. cross-layer equalisation), so
the graph TensorRT builds keeps its nodes; an input with no such producer is left alone
(a Mul node there, SmoothQuant's way, lost on YOLOv8n: bench/results/accuracy.md). A weight
another node or a subgraph reads is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .qdq import QuantPlan
from .smooth import Choice, Maps, best_alpha, fake_quant, fake_quant_weight, maps

PATCHES = 512  # sampled patches (or pixels) per batch and activation
# alpha 1 equalises a depthwise conv's input outright (its weights' quantization is unchanged)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class ConvGroup:
    """The convs that read activation `activation` of `k` channels: pointwise ones, or one
    depthwise conv (`depthwise`, with its kernel geometry)."""

    activation: str
    k: int
    layers: tuple[tuple[str, str], ...]  # (Conv node, its weight initializer)
    depthwise: bool = False
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)


def targets(model: Any, qplan: QuantPlan, skip: set[str] = frozenset()) -> list[ConvGroup]:
    """Activations the plan quantizes (not in `skip`) read by 2-D pointwise Convs, or by
    exactly one depthwise Conv, with constant FP32 weights no other node (nor a subgraph)
    reads, grouped by activation."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    look = maps(g)
    found: dict[str, list[ConvGroup]] = {}
    for n in g.node:
        if n.op_type != "Conv" or len(n.input) < 2:
            continue
        x, w = n.input[0], n.input[1]
        if (n.name, x) not in qplan.consumers or x in skip or w not in inits \
                or len(look.readers[w]) != 1 or w in look.nested:
            continue
        init = inits[w]
        if len(init.dims) != 4 or init.data_type != 1:  # FLOAT
            continue
        a = {at.name: (list(at.ints) if at.ints else at.s or at.i) for at in n.attribute}
        group, (c_out, c_in, kh, kw) = a.get("group", 1), list(init.dims)
        if group == 1 and (kh, kw) == (1, 1):
            found.setdefault(x, []).append(ConvGroup(x, c_in, ((n.name, w),)))
        elif group > 1 and c_in == 1 and c_out == group \
                and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"):
            pads = a.get("pads") or [0, 0, 0, 0]
            found.setdefault(x, []).append(ConvGroup(
                x, c_out, ((n.name, w),), True, (kh, kw), tuple(a.get("strides") or (1, 1)),
                tuple(pads), tuple(a.get("dilations") or (1, 1))))
    groups = []
    for x, convs in found.items():
        if len({c.k for c in convs}) != 1 or (any(c.depthwise for c in convs) and len(convs) > 1):
            continue  # mixed readers: no one error measure for a shared s
        if fold_chain(look, inits, x, convs[0].k, {c.layers[0][0] for c in convs}) is None:
            continue  # no constant affine to take 1/s: the graph would need a new node
        groups.append(ConvGroup(x, convs[0].k, tuple(c.layers[0] for c in convs),
                                *[getattr(convs[0], f) for f in ("depthwise", "kernel",
                                                                 "strides", "pads", "dilations")]))
    return groups


def sample_rows(group: ConvGroup, x: np.ndarray, rng: Any) -> np.ndarray:
    """Up to PATCHES rows of a batch x [N, C, H, W] as the group's convs read them: pixels
    [R, C] (pointwise), or patches [R, C, kh * kw] at random output positions (depthwise)."""
    n, c, h, w = x.shape
    if not group.depthwise:
        flat = x.transpose(0, 2, 3, 1).reshape(-1, c)
        return flat[rng.choice(len(flat), min(PATCHES, len(flat)), replace=False)]
    (kh, kw), (sh, sw), (dh, dw) = group.kernel, group.strides, group.dilations
    pt, pl, pb, pr = group.pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        return np.zeros((0, c, kh * kw), np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    pick = rng.choice(n * oh * ow, min(PATCHES, n * oh * ow), replace=False)
    b, rest = np.divmod(pick, oh * ow)
    i, j = np.divmod(rest, ow)
    rows = i[:, None] * sh + np.arange(kh) * dh  # [R, kh]
    cols = j[:, None] * sw + np.arange(kw) * dw  # [R, kw]
    patch = padded[b[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [R, kh, kw, C]
    return patch.reshape(len(pick), kh * kw, c).transpose(0, 2, 1)


def choose_depthwise(patches: np.ndarray, act_max: np.ndarray, weight: np.ndarray,
                     alphas: tuple[float, ...] = ALPHAS) -> Choice:
    """quant.smooth.choose for one depthwise conv: patches [R, C, T], weight [C, 1, kh, kw];
    error(alpha) = |Q(x / s) . Q(s w) - x . w|^2 / |x . w|^2 per channel summed, with the
    input's step max_c(act_max_c / s_c) / 127 and each channel's weight step its own."""
    x = patches.astype(np.float32)
    w = weight.reshape(weight.shape[0], -1).astype(np.float32)  # [C, T]
    ref = np.einsum("rct,ct->rc", x, w)
    norm = float(np.sum(ref * ref)) or 1.0

    def error(s: np.ndarray) -> float:
        wq = fake_quant_weight(w * s[:, None], 0)
        xq = fake_quant(x / s[:, None], act_max / s)
        return float(np.sum((np.einsum("rct,ct->rc", xq, wq) - ref) ** 2)) / norm

    return best_alpha(act_max, np.abs(w).max(axis=1), error, alphas)


def apply(model: Any, groups: list[ConvGroup], found: dict[str, np.ndarray]) -> Any:
    """A copy of `model` with each group's input divided by its s (`found[activation]`),
    folded into the constant affine that produces it (targets only returns such groups),
    and its convs' weights scaled on their input-channel axis."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    look = maps(g)  # constants get new names below; the tensors fold_chain checks do not
    for group in groups:
        s = found.get(group.activation)
        if s is None:
            continue
        chain = fold_chain(look, inits, group.activation, group.k,
                           {n for n, _ in group.layers})
        if chain is None:
            raise ValueError(f"{group.activation}: no constant affine to fold 1/s into")
        _fold(g, inits, chain, s)
        for _, weight in group.layers:
            w = numpy_helper.to_array(inits[weight])
            w = w * (s[:, None, None, None] if group.depthwise else s[None, :, None, None])
            inits[weight].CopyFrom(numpy_helper.from_array(w.astype(np.float32), weight))
    return m


HOMOGENEOUS = {"Relu", "LeakyRelu"}  # f(z / s) = f(z) / s for s > 0


def fold_chain(look: Maps, inits: dict, x: str, c: int, layer_nodes: set[str]
               ) -> list[Any] | None:
    """The nodes whose constants can take x / s (per channel, s > 0) so that no node is
    added: walking up from x through Add(., b) with a constant b and Relu/LeakyRelu, to a
    Mul(., a) with a constant a, a BatchNormalization or a Conv (its output channels);
    constants scalars or per-channel [C, 1, 1]. Every tensor on the way (x too) is read only
    by the next node (x: by `layer_nodes`) and is no graph output; a Conv's weight and bias
    are read by it alone, not in a subgraph either. None where that does not hold."""
    from onnx import numpy_helper

    producers, readers, outputs = look.producers, look.readers, look.outputs
    if x in outputs or set(readers.get(x, [])) != layer_nodes:
        return None
    chain, node = [], producers.get(x)
    for _ in range(8):
        if node is None:
            return None
        live = [i for i in node.input if i and i not in inits]
        if node.op_type in ("Add", "Mul"):
            consts = [i for i in node.input if i in inits]
            if len(node.input) != 2 or len(consts) != 1 or not _per_channel(
                    numpy_helper.to_array(inits[consts[0]]), c):
                return None
        elif node.op_type == "BatchNormalization":
            if live != [node.input[0]] or len(node.output) != 1:
                return None
        elif node.op_type == "Conv":
            own = [i for i in node.input[1:3] if i]
            if live != [node.input[0]] or len(own) != len(node.input) - 1 or any(
                    i not in inits or readers.get(i) != [node.name] or i in look.nested
                    for i in own) or inits[node.input[1]].dims[0] != c:
                return None
        elif node.op_type not in HOMOGENEOUS or len(live) != 1:
            return None
        chain.append(node)
        if node.op_type in ("Mul", "BatchNormalization", "Conv"):
            return chain
        z = live[0]
        if z in outputs or readers.get(z) != [node.name]:
            return None
        node = producers.get(z)
    return None


def _fold(g: Any, inits: dict, chain: list[Any], s: np.ndarray) -> None:
    """Divide the output of `chain` (fold_chain) by s per channel: Add/Mul constants and
    BatchNormalization's scale and bias as new initializers (a constant may be shared), a
    Conv's weight and bias in place on their output channels (read by it alone)."""
    from onnx import numpy_helper

    names = {i.name for i in g.initializer} | {o for n in g.node for o in n.output}

    def divided(name: str, channel_dims: int) -> np.ndarray:
        """The constant / s, C values on the channel axis followed by `channel_dims` - 1
        unit axes, with the constant's own rank where that is more (a [1, 1, 1, 1] scalar
        becomes [1, C, 1, 1])."""
        value = numpy_helper.to_array(inits[name]).astype(np.float32)
        tail = (1,) * (channel_dims - 1)
        per = np.broadcast_to(value.reshape(-1, *tail), (len(s), *tail)) / s.reshape(-1, *tail)
        rank = max(value.ndim, channel_dims)
        return per.reshape((1,) * (rank - channel_dims) + per.shape).astype(np.float32)

    def replace(node: Any, k: int, value: np.ndarray) -> None:
        name = f"{node.input[k]}_eq"
        while name in names:
            name += "_"
        names.add(name)
        g.initializer.append(numpy_helper.from_array(value, name))
        node.input[k] = name

    for node in chain:
        if node.op_type in ("Add", "Mul"):
            k = next(k for k, i in enumerate(node.input) if i in inits)
            replace(node, k, divided(node.input[k], 3))
        elif node.op_type == "BatchNormalization":
            for k in (1, 2):  # scale, bias
                replace(node, k, divided(node.input[k], 1))
        elif node.op_type == "Conv":
            for k in range(1, min(len(node.input), 3)):
                if node.input[k]:
                    w = numpy_helper.to_array(inits[node.input[k]]).astype(np.float32)
                    w = w / s.reshape(-1, *[1] * (w.ndim - 1))
                    inits[node.input[k]].CopyFrom(numpy_helper.from_array(
                        w.astype(np.float32), node.input[k]))


def _per_channel(value: np.ndarray, c: int) -> bool:
    """A constant that broadcasts per channel of an NCHW tensor: a scalar, or C values on the
    channel axis (shape [C, 1, 1] or [1, C, 1, 1])."""
    if value.size == 1:
        return value.ndim <= 4
    shape = list(value.shape)
    return value.size == c and len(shape) in (3, 4) and shape[-3] == c \
        and shape[-2:] == [1, 1] and (len(shape) == 3 or shape[0] == 1)

