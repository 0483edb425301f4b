"""INT8 weight rounding that minimises each layer's output error, not each weight's.

Nearest rounding on the per-channel grid keeps every weight within half a step, but where a
kernel subtracts neighbours (PP-OCRv4 rec's reparameterised depthwise convs) the small
errors add up in the output: one 3x3 depthwise conv rounded to nearest drops rec strings
from 1.00 to 0.68 with all else FP32 (GPTQ: 0.97; 100 full-width rendered lines). GPTQ
(Frantar et al., 2022, arXiv:2210.17323) rounds one input column at a time and moves each
rounding error onto the columns not yet rounded, weighted by the layer input's second moment
H = E[x x^T] from calibration data. The grid (per-channel max scale) stays as it is; only
which way each weight rounds changes, so the Q/DQ graph and what TensorRT builds are the
same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..data import rows as count_rows
from .qdq import QuantPlan, quantize_weight

MAX_SAMPLES = 64      # calibration rows the input statistics come from
MAX_COLUMNS = 4096    # output positions per row a layer's statistics keep (evenly strided)
# and over all MAX_SAMPLES rows at most COLUMNS_PER_K input vectors per weight of a row (as
# the GPTQ paper's 128 x 2048 tokens for rows of 4096-12288), or more where H stays under
# H_FLOPS (depthwise and narrow layers): H costs K^2 per vector, 9x a 3x3 conv's own work.
# PP-OCRv4 rec strings at 2e9, 6e9, 2e10: 0.945, 0.95, 0.96 (200 lines), quantize 11, 14, 43 s
COLUMNS_PER_K = 16
H_FLOPS = 6e9
# and, above that, H no costlier than FORWARD times the layer's own products on those rows
# (H: K x block per vector; the layer: K x rows per output position): fcn_resnet50's
# 2048-channel 3x3 head at every output pixel cost 2.25x its layer (quantize 63 -> 47 s);
# at 1.0 its statistics cost 21 s against its 14 s calibration pass, at 0.25 9-12 s with
# the same estimated error on held-out rows (median ratio to nearest 0.018 -> 0.019);
# never under one vector per weight of a Hessian block (each block is rounded on its own)
FORWARD = 0.25
CHUNK = 1 << 23       # floats of layer input columns gathered at once (32 MB)
DAMP = 0.01           # GPTQ's dampening, a share of H's mean diagonal
# input vectors per weight of a Hessian block below which GPTQ fits the calibration rows
# rather than the data and nearest rounding is kept: a Gemm on a flattened image with 32
# for 4608 got worse on held-out data; PP-OCRv4 rec's 1x3 convs at 0.44 gain (strings
# 0.94 -> 0.955)
MIN_COLUMNS = 0.25
# columns rounded between two matrix-product updates of the rest: the column-by-column
# spread inside a block costs rows x BLOCK / 2 per column (fcn_resnet50's rounding 4.5 s at
# 128, 3.6 s at 32, the same weights but for float32 ties)
BLOCK = 32
# Longest run of input columns one Hessian block covers. A wider row (resnet's 3x3x512
# convs: 4608; fcn_resnet50's head: 18432) is cut into equal blocks of whole input channels
# and GPTQ spreads errors within each block only: H costs K x MAX_K per input column instead
# of K^2, and its factorisation (K / MAX_K) MAX_K^3 instead of K^3.
MAX_K = 1152
SHORT = 64            # Hessian blocks this narrow are gathered then transposed (Moments.add)


@dataclass
class Layer:
    """A weight GPTQ can round: its consumer's input, and how to lay both out as rows x K."""

    weight: str
    axis: int
    node: Any
    source: str                  # the activation the weight multiplies


def layers(model: Any, qplan: QuantPlan) -> list[Layer]:
    """The planned weights of Conv (1-D/2-D, explicit pads), Gemm and 2-D MatMul whose other
    input is an activation and that have one consumer; the rest keep nearest rounding."""
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    found = []
    for name, axis in qplan.weights:
        if len(users.get(name, [])) != 1:
            continue
        n = users[name][0]
        ndim = len(inits[name].dims)
        attrs = {a.name: a.i for a in n.attribute if a.type == a.INT}
        pad = next((a.s for a in n.attribute if a.name == "auto_pad"), b"NOTSET")
        ok = (n.op_type == "Conv" and n.input[1] == name and ndim in (3, 4)
              and pad in (b"NOTSET", b"VALID")) or \
             (n.op_type == "MatMul" and n.input[1] == name and ndim == 2) or \
             (n.op_type == "Gemm" and n.input[1] == name and not attrs.get("transA", 0))
        if ok and n.input[0] not in inits:
            found.append(Layer(name, axis, n, n.input[0]))
    return found


def device() -> str:
    """Where GPTQ's linear algebra runs: the GPU when torch sees one (same numbers within
    float32 tolerance), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def round_weights(model: Any, qplan: QuantPlan, feeds: Iterable[dict[str, np.ndarray]],
                  session: Callable[[Any], Any], progress: Any = None,
                  moments: "Moments | None" = None
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """GPTQ-rounded INT8 weights {name: (int8, scale)} for the layers it applies to, and a
    summary: layers rounded, rows used, the median ratio of estimated output error
    (d^T H d, d the weight error) against nearest rounding, and per weight what was done
    (gptq, gptq in N blocks, or nearest and why). `session(model)` makes an ONNX Runtime
    session; `feeds` are calibration batches (FP32 inputs), read only when `moments` (the
    layer inputs' statistics the calibration pass gathered) is None or is not for this
    model; `progress` (a progress.Bar) is told of the rows read, then of each layer."""
    from onnx import helper

    found = Moments(model, qplan)
    if not found.layers:
        return {}, {"layers": 0, "rows": 0}
    reused = moments is not None and moments.rows > 0 and moments.matches(found)
    if reused:
        found = moments
    else:
        tapped = type(model)()
        tapped.CopyFrom(model)
        known = {o.name for o in tapped.graph.output}
        tapped.graph.output.extend(helper.make_tensor_value_info(t, 1, None)  # 1: FLOAT
                                   for t in found.taps if t not in known)
        sess = session(tapped)
        if progress is not None:
            progress.start("weight rounding: layer inputs", MAX_SAMPLES, "rows")
        for feed in feeds:
            if found.rows >= MAX_SAMPLES:
                break
            n = found.add(dict(zip(found.taps, sess.run(found.taps, feed))), count_rows(feed))
            if progress is not None:
                progress.advance(n)
    weights, summary = found.round(progress)
    return weights, {**summary, "layer_inputs": "calibration pass" if reused else "own pass"}


class Moments:
    """The GPTQ layers of a model and their inputs' second moments H, accumulated batch by
    batch over the first MAX_SAMPLES rows (by round_weights' own pass, or inside the
    calibration pass, which runs the same model over the same batches: one pass less)."""

    def __init__(self, model: Any, qplan: QuantPlan):
        from onnx import numpy_helper

        self.layers = layers(model, qplan)
        self.taps = list(dict.fromkeys(layer.source for layer in self.layers))
        names = {layer.weight for layer in self.layers}
        self.inits = {i.name: numpy_helper.to_array(i).astype(np.float32)
                      for i in model.graph.initializer if i.name in names}
        self.dev = device()
        # H depends on the input and the layer's window only: Q, K and V projections share one
        self.stats: dict[tuple, Any] = {}          # key -> (blocks, size, size) on `dev`
        self.seen: dict[tuple, int] = {}
        self.rows = 0

    def matches(self, other: "Moments") -> bool:
        """Gathered for the same layers, weights and inputs as `other` needs?"""
        return ([(a.weight, a.source) for a in self.layers]
                == [(b.weight, b.source) for b in other.layers]
                and all(np.array_equal(self.inits[k], v) for k, v in other.inits.items()))

    def add(self, values: dict[str, np.ndarray], n: int) -> int:
        """Add one batch of `n` rows ({tap: layer input}, more names allowed); returns the
        rows counted towards MAX_SAMPLES (0 once that many were seen)."""
        import torch

        if self.rows >= MAX_SAMPLES:
            return 0
        used = min(n, MAX_SAMPLES - self.rows)
        self.rows += n
        done = set()
        with torch.inference_mode():
            for layer in self.layers:
                w = self.inits[layer.weight]
                key = _window(layer, w)
                if key in done:
                    continue
                done.add(key)
                g, r, k = _as_rows(w, layer.node).shape
                size = _block_size(k, _taps(layer, w))
                own = r * _positions(values[layer.source].shape, n, w, layer.node) / size
                total = max(min(COLUMNS_PER_K * k, max(FORWARD * own * MAX_SAMPLES, size)),
                            H_FLOPS / (2 * g * k * size))
                limit = min(n * MAX_COLUMNS, int(-(-total * n // MAX_SAMPLES)))
                x = torch.from_numpy(np.asarray(values[layer.source])).to(self.dev)
                for cols in _columns(x, w, layer.node, limit, size):
                    # in (tap, channel) order: _by_channel. Short rows (depthwise: 9) as
                    # (size, positions): a product over rows of 9 floats ran at half speed
                    # (PP-OCRv4 rec's statistics 3.6 -> 4.7 s)
                    if size < SHORT:
                        cols = cols.transpose(1, 2).contiguous()
                        h = torch.matmul(cols, cols.mT)
                    else:
                        h = torch.matmul(cols.mT, cols)
                    self.stats[key] = self.stats[key].add_(h) if key in self.stats else h
                    self.seen[key] = self.seen.get(key, 0) + cols.shape[2 if size < SHORT else 1]
        return used

    def round(self, progress: Any = None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                   dict]:
        """round_weights' result from the moments gathered."""
        import torch

        if progress is not None:
            progress.start("weight rounding", len(self.layers), "layers")
        out, ratios, per_layer = {}, [], {}
        with torch.inference_mode():
            for layer in self.layers:
                w = self.inits[layer.weight]
                key = _window(layer, w)
                if key not in self.stats or self.seen[key] < MIN_COLUMNS * self.stats[
                        key].shape[-1]:
                    # e.g. a Gemm on a flattened image: fewer samples than weights per row
                    per_layer[layer.weight] = "nearest (too few input vectors)"
                else:
                    try:
                        h = _by_channel(self.stats[key], _taps(layer, w))
                        q, scale, ratio, blocks = _round_layer(w, layer, h, self.dev)
                    except ValueError:  # H cannot be factorised even damped
                        q, scale, ratio, blocks = None, None, 1.0, 1
                    if ratio < 1:  # the estimate on calibration data decides, per layer
                        out[layer.weight] = (q, scale)
                        per_layer[layer.weight] = ("gptq" if blocks == 1
                                                   else f"gptq, {blocks} blocks")
                    else:
                        per_layer[layer.weight] = "nearest (estimated error not lower)"
                    ratios.append(min(ratio, 1.0))
                if progress is not None:
                    progress.advance(1)
        return out, {"layers": len(out), "candidates": len(self.layers),
                     "rows": min(self.rows, MAX_SAMPLES),
                     "output_error_ratio_median": float(np.median(ratios)) if ratios else 1.0,
                     "device": self.dev, "max_block_columns": MAX_K, "per_layer": per_layer}


def _round_layer(w: np.ndarray, layer: Layer, h: Any, dev: str
                 ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """(GPTQ int8 weights in the layer's shape, scale, estimated output error against
    nearest rounding's, blocks per row) for one layer."""
    nearest, scale = quantize_weight(w, layer.axis)
    rows_k = _as_rows(w, layer.node)                       # (groups, r, K)
    groups, r, k = rows_k.shape
    size = h.shape[-1]
    s = np.repeat(scale.reshape(groups, 1, r), -(-k // size), axis=1).reshape(-1, r)
    wb = _blocked_rows(rows_k, size)                       # (groups * blocks, r, size)
    nb = _blocked_rows(_as_rows(nearest.astype(np.float32), layer.node), size)
    hb = h.reshape(-1, size, size)
    q = gptq(wb, hb, s, dev)
    before = _output_error(wb, nb, s, hb)
    after = _output_error(wb, q.astype(np.float32), s, hb)
    q = q.reshape(groups, -1, r, size).transpose(0, 2, 1, 3).reshape(groups, r, -1)[:, :, :k]
    ratio = after / before if before > 0 else 1.0
    return _from_rows(np.ascontiguousarray(q), w.shape, layer.node), scale, ratio, len(hb) // groups


def gptq(w: np.ndarray, h: Any, scale: np.ndarray, dev: str = "cpu",
         qrange: tuple[int, int] = (-127, 127)) -> np.ndarray:
    """Round (groups, r, K) weights onto the symmetric grid `scale` (groups, r), or
    (groups, r, K) for a scale per weight (INT4 blocks: qrange (-8, 7)), each group with its
    input second moment h (groups, K, K; numpy or torch), in float32 torch on `dev`.
    Columns in order; the error of column k, e = (w_k - q_k s) / U_kk, is spread over
    the later columns j as w_j -= e U_kj, U the upper Cholesky factor of H^-1 (H^-1 = U^T U,
    H = h + DAMP mean(diag h) I, dead inputs' diagonal set to 1), U from one Cholesky
    factorisation of H reversed and one triangular inverse (_upper_inverse_factor). Within
    a block of BLOCK columns the spread is column by column; onto the columns after the
    block it is one matrix product (the paper's lazy batch updates: same result,
    BLAS-bound). Tested equal to a float64 loop."""
    import torch

    with torch.inference_mode():
        wt = torch.as_tensor(np.asarray(w, np.float32), device=dev).clone()
        ht = torch.as_tensor(h, dtype=torch.float32, device=dev).clone()
        k_dim = wt.shape[2]
        diag = ht.diagonal(dim1=1, dim2=2)
        diag[diag <= 0] = 1.0
        u = _upper_inverse_factor(ht, DAMP * diag.mean(dim=1).clamp_min(1e-12))
        s = torch.as_tensor(np.asarray(scale, np.float32), device=dev).clamp_min(1e-30)
        s3 = s if s.dim() == 3 else s[:, :, None].expand(*s.shape, k_dim)
        lo, hi = qrange
        inv_d = u.diagonal(dim1=1, dim2=2).reciprocal()
        for b0 in range(0, k_dim, BLOCK):
            b1 = min(b0 + BLOCK, k_dim)
            wb, ub, sb = wt[:, :, b0:b1], u[:, b0:b1, b0:b1], s3[:, :, b0:b1]
            # column j is final once the columns before it are rounded: wb keeps the values
            # each was rounded from, so q and the errors come per block (fewer small ops)
            for j in range(b1 - b0 - 1):
                col, sj = wb[:, :, j], sb[:, :, j]
                err = torch.addcmul(col, torch.round(col / sj).clamp_(lo, hi), sj, value=-1)
                wb[:, :, j + 1:].addcmul_(err.mul_(inv_d[:, b0 + j, None])[:, :, None],
                                          ub[:, None, j, j + 1:], value=-1)
            qb = torch.round(wb / sb).clamp_(lo, hi)
            if b1 < k_dim:
                errs = (wb - qb * sb).mul_(inv_d[:, None, b0:b1])
                wt[:, :, b1:] -= torch.matmul(errs, u[:, b0:b1, b1:])
            wb.copy_(qb)
        return wt.to(torch.int8).cpu().numpy()


def _upper_inverse_factor(h: Any, damp: Any) -> Any:
    """U with U^T U = (h + damp I)^-1, per group, from one Cholesky factorisation and one
    triangular inverse (the paper's route, Cholesky of H, its inverse, then Cholesky of
    H^-1, costs three): with J the order-reversing permutation, J H J = L L^T gives
    H = V V^T with V = J L J upper triangular, so H^-1 = V^-T V^-1 and U = V^-1 (upper,
    positive diagonal: the same factor). The damping grows tenfold for a group whose
    float32 factorisation fails (an almost singular H)."""
    import torch

    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    flipped = h.flip(-1, -2)
    for _ in range(6):
        lower, info = torch.linalg.cholesky_ex(flipped + damp[:, None, None] * eye)
        if not bool(info.any()):
            v = lower.flip(-1, -2)
            u = torch.linalg.solve_triangular(v, eye.expand_as(v), upper=True)
            if bool(torch.isfinite(u).all()):
                return u
        damp = damp * 10
    raise ValueError("GPTQ: the layer input's second moment cannot be factorised")


def _window(layer: Layer, w: np.ndarray) -> tuple:
    """What H depends on: the input tensor and how the layer reads it."""
    if layer.node.op_type != "Conv":
        return (layer.source,)
    attrs = tuple((a.name, tuple(a.ints) or a.i) for a in sorted(layer.node.attribute,
                                                                 key=lambda a: a.name))
    return (layer.source, w.shape[1:], attrs)


def _output_error(w: np.ndarray, q: np.ndarray, s: np.ndarray, h: Any) -> float:
    """sum over rows of d^T H d, d the row's weight error; on every k-th row of large layers
    (an estimate that only decides GPTQ or nearest)."""
    import torch

    step = max(1, w.shape[1] // 256)
    d = torch.from_numpy(np.ascontiguousarray(w[:, ::step] - q[:, ::step] * s[:, ::step, None]))
    d = d.to(h.device)
    return float((torch.matmul(d, h) * d).sum(dtype=torch.float64))


def _conv_attrs(node: Any, spatial: int) -> tuple[int, list[int], list[int], list[int]]:
    from onnx import helper

    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}  # VALID: no pads
    return (int(a.get("group", 1)), list(a.get("pads", [0] * 2 * spatial)),
            list(a.get("strides", [1] * spatial)), list(a.get("dilations", [1] * spatial)))


def _columns(x: Any, w: np.ndarray, node: Any, limit: int, size: int) -> Iterator[Any]:
    """The layer input (a torch tensor) as (groups * blocks, p, size) chunks of at most
    CHUNK floats: per kept output position (over all chunks P positions evenly strided down
    to at most `limit`) the inputs each block of `size` columns of a row multiplies, a conv's
    gathered at the kept positions only (never a whole batch's im2col). A conv's columns
    come in (kernel tap, channel) order, as the gathered pixels lie in memory (putting them
    in the weights' (channel, tap) order here moved every value with a stride: 5 of
    fcn_resnet50's 23 s); _by_channel reorders H, size x size per block, instead. Channels
    are zero-padded to whole blocks."""
    import torch
    import torch.nn.functional as F

    x = x.float()
    if node.op_type != "Conv":
        flat = x.reshape(-1, x.shape[-1])
        k = flat.shape[1]
        nb = -(-k // size)
        kept = flat[::max(1, -(-len(flat) // limit))]
        if nb * size != k:
            kept = F.pad(kept, (0, nb * size - k))
        per = max(1, CHUNK // (nb * size))
        for s0 in range(0, len(kept), per):
            yield kept[s0:s0 + per].reshape(-1, nb, size).transpose(0, 1)
        return
    if w.ndim == 3:                                  # 1-D conv as 2-D with height 1
        x, w = x[:, :, None], w[:, :, None]
        g, p, st, dil = _conv_attrs(node, 1)
        p, st, dil = [0, p[0], 0, p[1]], [1, st[0]], [1, dil[0]]
    else:
        g, p, st, dil = _conv_attrs(node, 2)
    cg, kh, kw = w.shape[1:]
    taps = kh * kw
    cb = size // taps                                # channels per block
    nb = -(-cg // cb)
    xp = F.pad(x, (p[1], p[3], p[0], p[2]))
    n, c, hp, wp = xp.shape
    oh = (hp - dil[0] * (kh - 1) - 1) // st[0] + 1
    ow = (wp - dil[1] * (kw - 1) - 1) // st[1] + 1
    pixels = xp.permute(0, 2, 3, 1).reshape(-1, c)   # (n * hp * wp, C): a row per pixel
    keep = torch.arange(0, n * oh * ow, max(1, -(-n * oh * ow // limit)), device=x.device)
    img, pos = keep // (oh * ow), keep % (oh * ow)
    corner = (img * hp + (pos // ow) * st[0]) * wp + (pos % ow) * st[1]
    offsets = torch.tensor([i * dil[0] * wp + j * dil[1] for i in range(kh) for j in range(kw)],
                           device=x.device)
    per = max(1, CHUNK // (c * taps))
    for s0 in range(0, len(keep), per):
        rows = pixels.index_select(0, (corner[s0:s0 + per, None] + offsets).reshape(-1))
        rows = rows.reshape(-1, taps, g, cg)
        if nb * cb != cg:
            rows = F.pad(rows, (0, nb * cb - cg))
        # (p, taps, g, nb, cb) -> (g, nb, p, taps, cb): runs of cb channels move whole
        yield rows.reshape(-1, taps, g, nb, cb).permute(2, 3, 0, 1, 4).reshape(
            g * nb, -1, taps * cb)


def _by_channel(h: Any, taps: int) -> Any:
    """H of (blocks, size, size) from _columns' (tap, channel) order into the weights'
    (channel, tap) order."""
    import torch

    if taps == 1:
        return h
    cb = h.shape[-1] // taps
    j = torch.arange(h.shape[-1], device=h.device)
    order = (j % taps) * cb + j // taps              # (channel, tap) position -> its index
    return h.index_select(-1, order).index_select(-2, order)


def _positions(shape: tuple[int, ...], rows: int, w: np.ndarray, node: Any) -> float:
    """Output positions per data row (of `rows` in the batch whose layer input has this
    shape): a conv's output pixels, a MatMul's tokens."""
    if node.op_type != "Conv":
        return max(1, int(np.prod(shape[:-1]))) / max(1, rows)
    spatial = w.ndim - 2
    _, p, st, dil = _conv_attrs(node, spatial)
    out = shape[0]
    for i in range(spatial):
        span = shape[2 + i] + p[i] + p[i + spatial] - dil[i] * (w.shape[2 + i] - 1) - 1
        out *= span // st[i] + 1
    return max(1, out) / max(1, rows)


def _taps(layer: Layer, w: np.ndarray) -> int:
    """Columns per input channel (a conv's kernel size): blocks never split a channel."""
    return int(np.prod(w.shape[2:])) if layer.node.op_type == "Conv" else 1


def _block_size(k: int, taps: int) -> int:
    """Columns per Hessian block for rows of K columns: all of them up to MAX_K, else the
    fewest equal blocks of whole channels."""
    if k <= MAX_K:
        return k
    size = -(-k // -(-k // MAX_K))
    return -(-size // taps) * taps


def _blocked_rows(w: np.ndarray, size: int) -> np.ndarray:
    """(groups, r, K) -> (groups * blocks, r, size), K zero-padded to whole blocks."""
    g, r, k = w.shape
    nb = -(-k // size)
    w = np.pad(w, ((0, 0), (0, 0), (0, nb * size - k)))
    return np.ascontiguousarray(w.reshape(g, r, nb, size).transpose(0, 2, 1, 3)).reshape(-1, r, size)


def _as_rows(w: np.ndarray, node: Any) -> np.ndarray:
    """Weights as (groups, rows, K), rows being the output channels."""
    if node.op_type == "Conv":
        g = _conv_attrs(node, w.ndim - 2)[0]
        return w.reshape(g, w.shape[0] // g, -1)
    trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return (w if trans else w.T)[None]


def _from_rows(q: np.ndarray, shape: tuple[int, ...], node: Any) -> np.ndarray:
    if node.op_type == "Conv":
        return q.reshape(shape)
    trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return np.ascontiguousarray(q[0] if trans else q[0].T)
