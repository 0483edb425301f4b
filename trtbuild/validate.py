"""Accuracy of a candidate model (INT8 Q/DQ, FP16, engine) against the FP32 reference.

Polygraphy's Comparator runs both runners on the validation set and checks them with
per-precision tolerances; on top of its results this module computes what deployment gates
need: per-output max/mean abs error, cosine similarity, top-1 agreement for classifiers and
label accuracy where labels.csv is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .data import Dataset, read_labels

log = logging.getLogger(__name__)
TOLERANCES = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "int8": (1e-1, 1e-1)}  # atol, rtol


@dataclass(frozen=True)
class Gates:
    min_top1_agreement: float | None = None
    min_cosine: float | None = None

    def failures(self, record: dict[str, Any]) -> list[str]:
        out = []
        for name, m in record["outputs"].items():
            top1 = m.get("top1_agreement")
            if self.min_top1_agreement is not None and top1 is not None and \
                    top1 < self.min_top1_agreement:
                out.append(f"{name}: top-1 agreement {top1:.4f} < {self.min_top1_agreement}")
            if self.min_cosine is not None and m["cosine_mean"] < self.min_cosine:
                out.append(f"{name}: mean cosine {m['cosine_mean']:.4f} < {self.min_cosine}")
            if m["non_finite"]:
                out.append(f"{name}: {m['non_finite']} NaN/Inf values in the candidate's output")
        return out


class RandomData:
    """Dataset stand-in when no samples are given: seeded random inputs (integers in [0, 2))."""

    def __init__(self, model: Any, batches: int = 8, batch_size: int = 4):
        self.model, self.batches, self.batch_size = model, batches, batch_size

    def samples(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        from . import onnxio

        sess = onnxio.session(self.model)
        for k in range(self.batches):
            yield f"random[{k}]", onnxio.random_feed(sess, batch=self.batch_size, seed=k)


class _Loader:
    """Re-iterable feeds for Polygraphy (it iterates once per runner); records file order."""

    def __init__(self, data: Dataset):
        self.data, self.origins = data, []

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.origins = []
        batch: list[tuple[str, dict]] = []
        for origin, feed in self.data.samples():
            batch.append((origin, feed))
            if len(batch) == self.data.batch_size:
                yield self._flush(batch)
                batch = []
        if batch:
            yield self._flush(batch)

    def _flush(self, batch: list) -> dict[str, np.ndarray]:
        for origin, feed in batch:
            self.origins += [origin] * len(next(iter(feed.values())))
        return {k: np.concatenate([f[k] for _, f in batch]) for k in batch[0][1]}


def compare(reference: Path, candidate: Path, data: Dataset, precision: str = "int8",
            labels_dir: Path | None = None) -> dict[str, Any]:
    """Run both ONNX models with Polygraphy (ONNX Runtime, CPU) and measure agreement."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return compare_runners(
        OnnxrtRunner(SessionFromOnnx(str(reference), providers=["cpu"]), name="reference"),
        OnnxrtRunner(SessionFromOnnx(str(candidate), providers=["cpu"]), name=precision),
        data, precision, labels_dir)


def compare_engine(reference: Path, engine: Path, data: Dataset, precision: str,
                   labels_dir: Path | None = None) -> dict[str, Any]:
    """A TensorRT engine on the GPU (Polygraphy TrtRunner) against the FP32 ONNX model on the
    CPU. Needs `tensorrt` and a CUDA GPU (Polygraphy's TensorRT backend imports tensorrt)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return compare_runners(
        OnnxrtRunner(SessionFromOnnx(str(reference), providers=["cpu"]), name="reference"),
        TrtRunner(EngineFromBytes(engine.read_bytes()), name=f"trt-{precision}"),
        data, precision, labels_dir)


def compare_runners(ref_runner: Any, cand_runner: Any, data: Dataset, precision: str,
                    labels_dir: Path | None = None) -> dict[str, Any]:
    """Polygraphy's Comparator over both runners, then our metrics on its results."""
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # our summary reports the comparison
    loader = _Loader(data)
    results = Comparator.run([ref_runner, cand_runner], data_loader=loader)
    atol, rtol = TOLERANCES[precision]
    passed = bool(Comparator.compare_accuracy(
        results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol)))
    ref_iters, cand_iters = results[0][1], results[1][1]
    record: dict[str, Any] = {"precision": precision, "samples": len(loader.origins),
                              "polygraphy": {"atol": atol, "rtol": rtol, "passed": passed},
                              "outputs": {}}
    labels = read_labels(labels_dir) if labels_dir else None
    for name in ref_iters[0].keys():
        ref = np.concatenate([np.asarray(it[name]) for it in ref_iters])
        cand = np.concatenate([np.asarray(it[name]) for it in cand_iters])
        record["outputs"][name] = output_metrics(ref, cand)
        if labels and _is_classifier(ref) and "label_accuracy" not in record:
            record["label_accuracy"] = _label_accuracy(ref, cand, loader.origins, labels)
    return record


def output_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    err = np.abs(ref64 - cand64)
    a, b = ref64.reshape(len(ref64), -1), cand64.reshape(len(cand64), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, (a * b).sum(axis=1) / np.maximum(denom, 1e-300), 1.0)
    m = {"max_abs_err": float(np.nanmax(err)), "mean_abs_err": float(np.nanmean(err)),
         "cosine_mean": float(np.nanmean(cos)), "cosine_min": float(np.nanmin(cos)),
         "non_finite": int((~np.isfinite(cand64)).sum())}
    if _is_classifier(ref):
        m["top1_agreement"] = float((ref.argmax(1) == cand.argmax(1)).mean())
    return m


def _is_classifier(y: np.ndarray) -> bool:
    return y.ndim == 2 and y.shape[1] > 1


def _label_accuracy(ref: np.ndarray, cand: np.ndarray, origins: list[str],
                    labels: dict[str, int]) -> dict[str, Any]:
    keys = [Path(o).name for o in origins]
    have = np.array([k in labels for k in keys])
    y = np.array([labels.get(k, -1) for k in keys])
    if not have.any():
        return {}
    ref_acc = float((ref.argmax(1)[have] == y[have]).mean())
    cand_acc = float((cand.argmax(1)[have] == y[have]).mean())
    return {"labelled": int(have.sum()), "reference": ref_acc, "candidate": cand_acc,
            "delta_points": round(100 * (cand_acc - ref_acc), 3)}
