"""Accuracy metrics a deployment gate needs, from reference and candidate outputs, and the
gates that turn them into pass/fail.

Per output (batch axis first): max/mean abs error; per-sample cosine; a per-slice cosine
along every other axis (so box coordinates in 0-320 cannot drown collapsed class scores);
top-1 agreement for classifiers. Outputs with at most FEW_VALUES values per sample that
are not probability rows (a VAD probability, MOS figures), where cosine stays near 1 however
wrong they are, are judged by abs/rel error and correlation too, never as classes.
Task scores come from a --metric-script plug-in: fn(reference, candidate, names) ->
{name: score}, the way Polygraphy's compare-func scripts work.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .config import Gate, GateSettings
from .errors import OptionError, TrtBuildError
from .quant.qdq import PASS_THROUGH

SLICE_MAX = 4096  # axes longer than this (flattened positions) get no per-slice cosine
SLICE_MIN = 8     # values a slice needs for its cosine to mean something
FEW_VALUES = 4    # up to this many values per sample: judged value by value, not by cosine


def gate_failures(record: dict[str, Any], gates: GateSettings) -> list[str]:
    """One line per failed gate of a validation record (NaN/Inf in an output always fails).
    Raises TrtBuildError(2) for a --gate naming no metric the record has."""
    out = []
    for name, m in record["outputs"].items():
        top1 = m.get("top1_agreement")
        if gates.min_top1_agreement is not None and top1 is not None and \
                not top1 >= gates.min_top1_agreement:
            out.append(f"{name}: top-1 agreement {top1:.4f} < {gates.min_top1_agreement}")
        if "shape_mismatch" in m:
            out.append(f"{name}: {m['shape_mismatch']}")
            continue
        if gates.min_cosine is not None:
            for key in ("cosine_mean", "channel_cosine_mean", "correlation"):
                if m.get(key) is not None and not m[key] >= gates.min_cosine:
                    out.append(f"{name}: {key} {m[key]:.4f} < {gates.min_cosine}")
            # a few values per sample: correlation ignores scale and offset, so the error too
            if "mean_rel_err" in m and not m["mean_rel_err"] <= 1 - gates.min_cosine:
                out.append(f"{name}: mean relative error {m['mean_rel_err']:.4f} > "
                           f"{1 - gates.min_cosine:.4g} (1 - min cosine)")
        if m.get("non_finite"):
            out.append(f"{name}: {m['non_finite']} NaN/Inf values in the candidate's output")
    extra = list(gates.gates)
    if gates.accuracy_target is not None and gates.accuracy_target not in extra:
        extra.append(gates.accuracy_target)
    for g in extra:
        x = gate_value(record, g)
        if not g.holds(x):
            out.append(f"{g.name} {x:.4f} does not meet {g}")
    return out


def gate_value(record: dict[str, Any], gate: Gate) -> float:
    """The value a gate reads: a plug-in score, `OUTPUT.metric`, or a metric name taken at
    its worst over all outputs (the minimum for >= gates, the maximum for <= gates)."""
    values = metric_values(record)
    if gate.name not in values:
        raise TrtBuildError(f"--gate {gate}: no metric '{gate.name}' (available: "
                            f"{', '.join(sorted(values))})")
    found = values[gate.name]
    return min(found) if gate.op.startswith(">") else max(found)


def metric_values(record: dict[str, Any]) -> dict[str, list[float]]:
    """Every number a gate can name in a validation record."""
    values: dict[str, list[float]] = {}
    for out_name, m in record["outputs"].items():
        for key, x in m.items():
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                values.setdefault(key, []).append(float(x))
                values[f"{out_name}.{key}"] = [float(x)]
    for key, x in record.get("scores", {}).items():
        values[key] = [float(x)]
    acc = record.get("label_accuracy") or {}
    if "candidate" in acc:
        values["label_accuracy"] = [acc["candidate"]]
        values["label_delta_points"] = [acc["delta_points"]]
    return values


class RandomData:
    """Dataset stand-in when no samples are given: seeded random inputs (integers in [0, 2)),
    one row each, of the shapes the user gave (--input/--shapes) or else batch 1 and `dim`
    for other symbolic dims; batched by 4 where every input has a symbolic batch axis."""

    def __init__(self, model: Any, count: int = 32, shapes: dict[str, tuple] | None = None,
                 dim: int = 1):
        from .onnx.inputs import model_inputs

        self.model, self.count, self.shapes, self.dim = model, count, shapes, dim
        stackable = not shapes and all(i.batchable for i in model_inputs(model))
        self.batch_size = 4 if stackable else 1

    def samples(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        from .onnx.inputs import random_feed

        for k in range(self.count):
            yield f"random[{k}]", random_feed(self.model, batch=1, seed=k, shapes=self.shapes,
                                              dim=self.dim)


def batch_axes(model: Any) -> dict[str, int]:
    """Per graph output, the axis holding the batch: the one whose symbolic name is the
    first input's axis-0 symbol (a CTC recognizer's (T, N, C) output has it on axis 1);
    0 where the model does not say."""
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] \
        if model.graph.input else []
    batch = dims[0] if dims and dims[0] else None
    axes = {}
    for o in model.graph.output:
        names = [d.dim_param for d in o.type.tensor_type.shape.dim]
        axes[o.name] = names.index(batch) if batch and batch in names else 0
    return axes


# what a pooled or normalized feature vector comes from (through shape ops)
FEATURE_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "GlobalAveragePool", "GlobalMaxPool",
               "LpNormalization", "LayerNormalization"}
SHAPE_OPS = PASS_THROUGH | {"Cast"}


def feature_outputs(model: Any) -> set[str]:
    """Graph outputs that are features, not class scores: their producer (through shape
    ops) pools or normalizes (FEATURE_OPS, or a Div by a computed tensor: mean pooling
    under a mask, an L2 norm), as a sentence embedding or a backbone's pooled vector. Their
    argmax is no class, so they get no top-1 agreement (logits divided by a constant
    temperature still do)."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    constants = {i.name for i in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output}
    found = set()
    for out in g.output:
        node = producers.get(out.name)
        while node is not None and node.op_type in SHAPE_OPS:
            node = producers.get(node.input[0])
        if node is not None and (node.op_type in FEATURE_OPS or node.op_type == "Div"
                                 and node.input[1] not in constants):
            found.add(out.name)
    return found


def output_metrics(ref: np.ndarray, cand: np.ndarray, classes: bool = True) -> dict[str, Any]:
    """Metrics of one output, batch axis first (`classes` False: a feature vector, no
    top-1 agreement whatever its shape)."""
    if ref.shape != cand.shape:  # e.g. a detector whose NMS keeps a different box count
        return {"shape_mismatch": f"candidate shape {cand.shape} != reference {ref.shape}",
                "non_finite": 0}
    if ref.size == 0:
        return {"empty": True, "non_finite": 0}
    sums = _Sums(ref, cand)
    m: dict[str, Any] = {"max_abs_err": sums.max_err, "mean_abs_err": sums.mean_err,
                         "non_finite": sums.non_finite}
    per_sample = ref.size // len(ref)
    if per_sample <= FEW_VALUES and not is_distribution(ref):
        # a value or a few per sample (a score, MOS figures): cosine stays near 1.0 however
        # wrong they are (0.9986 with a MOS off by 0.17), and their argmax is no class
        a = ref.astype(np.float64).ravel()
        b = cand.astype(np.float64).ravel()
        err = np.abs(a - b)
        m["max_rel_err"] = float(np.nanmax(err / np.maximum(np.abs(a), 1e-6)))
        m["mean_rel_err"] = float(np.nanmean(err) / max(float(np.mean(np.abs(a))), 1e-12))
        m["correlation"] = _correlation(a, b)
        m["judged_by"] = (f"abs/rel error and correlation ({per_sample} value"
                          f"{'s' if per_sample > 1 else ''} per sample)")
        if per_sample == 1:  # cosine is identically 1
            return m
    cos = sums.cosines(0)  # with a few values: shown, and gated where a gate names it
    m["cosine_mean"], m["cosine_min"] = float(np.nanmean(cos)), float(np.nanmin(cos))
    m.update(_worst_slices(sums))
    if classes and is_classifier(ref):
        m["top1_agreement"] = float((ref.argmax(1) == cand.argmax(1)).mean())
    return m


def slice_axes(shape: tuple[int, ...]) -> list[int]:
    """The non-batch axes a per-slice comparison is taken along: 2..SLICE_MAX indices, each
    slice at least SLICE_MIN values."""
    size = int(np.prod(shape))
    return [k for k in range(1, len(shape)) if 2 <= shape[k] <= SLICE_MAX
            and size // shape[k] >= SLICE_MIN]


class _Sums:
    """One pass over an output, a few samples at a time in float64 (no full-size float64
    copy: PP-OCRv4 rec's 200x40x6625 output took 6 s that way): the error statistics and,
    per index of the batch axis and of every axis a slice cosine is taken on, the sums of
    ref*cand, ref^2 and cand^2."""

    CHUNK = 1 << 21  # values per step

    def __init__(self, ref: np.ndarray, cand: np.ndarray):
        self.axes = [0] + slice_axes(ref.shape)
        self.dot = {k: np.zeros(ref.shape[k]) for k in self.axes}
        self.ref2 = {k: np.zeros(ref.shape[k]) for k in self.axes}
        self.cand2 = {k: np.zeros(ref.shape[k]) for k in self.axes}
        err_max, err_sum, err_n, self.non_finite = -np.inf, 0.0, 0, 0
        step = max(1, self.CHUNK // max(1, ref.size // len(ref)))
        for i in range(0, len(ref), step):
            a, b = ref[i:i + step].astype(np.float64), cand[i:i + step].astype(np.float64)
            err = np.abs(a - b)
            ok = ~np.isnan(err)
            if ok.any():
                err_max = max(err_max, float(err[ok].max()))
                err_sum, err_n = err_sum + float(err[ok].sum()), err_n + int(ok.sum())
            self.non_finite += int((~np.isfinite(b)).sum())
            for k in self.axes:
                others = tuple(d for d in range(a.ndim) if d != k)
                into = slice(i, i + len(a)) if k == 0 else slice(None)
                self.dot[k][into] += np.sum(a * b, axis=others)
                self.ref2[k][into] += np.sum(a * a, axis=others)
                self.cand2[k][into] += np.sum(b * b, axis=others)
        self.max_err = err_max if err_n else math.nan
        self.mean_err = err_sum / err_n if err_n else math.nan

    def cosines(self, axis: int) -> np.ndarray:
        """Cosine per index of `axis`; 1.0 where both are zero, 0.0 where one is."""
        na, nb = np.sqrt(self.ref2[axis]), np.sqrt(self.cand2[axis])
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = self.dot[axis] / (na * nb)
        return np.where((na == 0) & (nb == 0), 1.0, np.where(na * nb > 0, cos, 0.0))


def _worst_slices(sums: _Sums) -> dict[str, Any]:
    """Cosine per index of every non-batch axis (over everything else), each axis averaged;
    the axis with the lowest average is reported with its worst index. Slices of fewer than
    SLICE_MIN values (a sign test, not a cosine) and all-zero reference slices (dead
    channels, padding: the element errors judge them) are left out."""
    best: dict[str, Any] = {}
    for axis in sums.axes[1:]:
        cos = np.where(sums.ref2[axis] > 0, sums.cosines(axis), np.nan)
        if np.isnan(cos).all():
            continue
        mean = float(np.nanmean(cos))
        if not best or mean < best["channel_cosine_mean"]:
            k = int(np.nanargmin(cos))
            best = {"channel_cosine_mean": mean, "channel_cosine_min": float(cos[k]),
                    "channel_worst": f"axis {axis} index {k}"}
    return best


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def class_scores(y: np.ndarray) -> bool:
    """Could `y` be (N, classes) scores? Float, two or more per sample; integer outputs
    (token ids passed through) are not. With labels given, such an output is one."""
    return y.ndim == 2 and y.shape[1] > 1 and np.issubdtype(y.dtype, np.floating)


def is_classifier(y: np.ndarray) -> bool:
    """Class scores judged by top-1 agreement: not FEW_VALUES or fewer per sample unless
    they are probabilities (three MOS figures are no classes; PP-OCR cls's two softmax
    scores are)."""
    return class_scores(y) and (y.shape[1] > FEW_VALUES or is_distribution(y))


def is_distribution(y: np.ndarray) -> bool:
    """Rows of non-negative values summing to 1 (softmax outputs), batch axis first."""
    if not np.issubdtype(y.dtype, np.floating) or y.ndim < 2 or y.shape[1] < 2:
        return False
    rows = y.reshape(len(y), y.shape[1], -1).astype(np.float64)
    return bool(np.all(rows >= -1e-6) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def label_accuracy(ref: np.ndarray, cand: np.ndarray, origins: list[str],
                   labels: dict[str, int]) -> dict[str, Any] | None:
    """Label accuracy of both models on the samples labels.csv names; None when it names
    none of them."""
    keys = [Path(o).name for o in origins]
    have = np.array([k in labels for k in keys])
    y = np.array([labels.get(k, -1) for k in keys])
    if not have.any():
        return None
    ref_acc = float((ref.argmax(1)[have] == y[have]).mean())
    cand_acc = float((cand.argmax(1)[have] == y[have]).mean())
    return {"labelled": int(have.sum()), "reference": ref_acc, "candidate": cand_acc,
            "delta_points": round(100 * (cand_acc - ref_acc), 3)}


_LOADED: dict[tuple[Path, str], Callable] = {}  # (file, function): imported once per process


def metric_file(spec: Any) -> str:
    """The FILE of --metric-script FILE.py:FN, checked to exist (nothing imported)."""
    target = str(spec).rpartition(":")[0]
    if not Path(target).is_file():
        raise OptionError("--metric-script", "no such file", where=target)
    return target


def load_metric(spec: Any) -> tuple[Callable, str]:
    """(callable, label) for --metric-script FILE.py:FN, or a callable given to the API.
    The file is imported once; every later check (each search step) reuses it."""
    if callable(spec):
        return spec, getattr(spec, "__name__", "metric")
    from .onnx.source import import_target

    target, fn_name = metric_file(spec), str(spec).rpartition(":")[2]
    key = (Path(target).resolve(), fn_name)
    if key not in _LOADED:
        fn = getattr(import_target(target), fn_name, None)
        if not callable(fn):
            raise TrtBuildError(f"{spec}: {target} has no callable '{fn_name}'")
        _LOADED[key] = fn
    return _LOADED[key], str(spec)


def task_scores(spec: Any, ref: dict[str, np.ndarray], cand: dict[str, np.ndarray],
                names: list[str]) -> dict[str, float]:
    """The plug-in's named scores. Raises TrtBuildError(2) when it fails or returns
    anything but {name: number}."""
    fn, label = load_metric(spec)
    try:
        scores = fn(ref, cand, list(names))
    except (Exception, SystemExit) as e:  # the plug-in's failure is the user's code
        raise TrtBuildError(f"{label}: metric raised {type(e).__name__}: {e}")
    if not isinstance(scores, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float, np.number))
            and not isinstance(v, bool) for k, v in scores.items()):
        raise TrtBuildError(f"{label}: metric returned {type(scores).__name__}, expected a "
                            "dict {name: number}")
    return {k: float(v) if math.isfinite(float(v)) else math.nan for k, v in scores.items()}


def compare(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], names: list[str],
            labels: dict[str, int] | None = None, metric_script: Any = None,
            features: set[str] = frozenset()) -> dict[str, Any]:
    """Metrics of every output (arrays batch axis first), label accuracy where labels are
    given, and the plug-in's scores: the part of a validation record gates read.
    `features`: outputs that are feature vectors (feature_outputs)."""
    record: dict[str, Any] = {"outputs": {}}
    for name in ref:
        record["outputs"][name] = output_metrics(ref[name], cand[name], name not in features)
        if labels and class_scores(ref[name]) and "label_accuracy" not in record:
            found = label_accuracy(ref[name], cand[name], names, labels)
            if found is not None:
                record["label_accuracy"] = found
    if metric_script is not None:
        record["scores"] = task_scores(metric_script, ref, cand, names)
    return record


def stack(batches: list[np.ndarray], axis: int) -> np.ndarray:
    """Per-batch outputs joined along their batch axis, which then comes first. Outputs of
    other lengths (variable-length samples: a longer sentence, a wider text line) are padded
    with zeros at the end of each other axis, in the reference and the candidate alike:
    zeros change no cosine and no difference, but dilute means over elements."""
    arrays = [np.asarray(b) for b in batches]
    if arrays[0].ndim == 0:
        return np.stack(arrays)
    if len({a.shape[:axis] + a.shape[axis + 1:] for a in arrays}) > 1 and \
            len({a.ndim for a in arrays}) == 1:
        top = np.max([a.shape for a in arrays], axis=0)
        arrays = [np.pad(a, [(0, 0) if d == axis else (0, int(top[d]) - a.shape[d])
                             for d in range(a.ndim)]) for a in arrays]
    return np.moveaxis(np.concatenate(arrays, axis=axis), axis, 0)
