"""Accuracy metrics a deployment gate needs, from reference and candidate outputs:
per-output max/mean abs error, cosine similarity, top-1 agreement for classifiers, label
accuracy where labels.csv is given; and the gates that turn them into pass/fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .config import GateSettings


def gate_failures(record: dict[str, Any], gates: GateSettings) -> list[str]:
    """One line per failed gate of a validation record (NaN/Inf in an output always fails)."""
    out = []
    for name, m in record["outputs"].items():
        top1 = m.get("top1_agreement")
        if gates.min_top1_agreement is not None and top1 is not None and \
                not top1 >= gates.min_top1_agreement:
            out.append(f"{name}: top-1 agreement {top1:.4f} < {gates.min_top1_agreement}")
        if gates.min_cosine is not None and not m["cosine_mean"] >= gates.min_cosine:
            out.append(f"{name}: mean cosine {m['cosine_mean']:.4f} < {gates.min_cosine}")
        if m["non_finite"]:
            out.append(f"{name}: {m['non_finite']} NaN/Inf values in the candidate's output")
    return out


class RandomData:
    """Dataset stand-in when no samples are given: seeded random inputs (integers in [0, 2))."""

    def __init__(self, model: Any, batches: int = 8, batch_size: int = 4):
        self.model, self.batches, self.batch_size = model, batches, batch_size

    def samples(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        from .onnx.inputs import random_feed

        for k in range(self.batches):
            yield f"random[{k}]", random_feed(self.model, batch=self.batch_size, seed=k)


def output_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    err = np.abs(ref64 - cand64)
    a, b = ref64.reshape(len(ref64), -1), cand64.reshape(len(cand64), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, (a * b).sum(axis=1) / np.maximum(denom, 1e-300), 1.0)
    m = {"max_abs_err": float(np.nanmax(err)), "mean_abs_err": float(np.nanmean(err)),
         "cosine_mean": float(np.nanmean(cos)), "cosine_min": float(np.nanmin(cos)),
         "non_finite": int((~np.isfinite(cand64)).sum())}
    if is_classifier(ref):
        m["top1_agreement"] = float((ref.argmax(1) == cand.argmax(1)).mean())
    return m


def is_classifier(y: np.ndarray) -> bool:
    return y.ndim == 2 and y.shape[1] > 1


def label_accuracy(ref: np.ndarray, cand: np.ndarray, origins: list[str],
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
