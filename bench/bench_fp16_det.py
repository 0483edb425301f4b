"""PP-OCRv4 det in FP16: what an FP16 engine computes (emulated in ONNX Runtime) vs FP32, on
rendered text pages, before (plain conversion) and after (BatchNormalization folded, nodes
FP16 cannot hold kept in FP32). Also ONNX Runtime's own FP16 run, the check trtbuild used
to trust.

Usage: .venv/bin/python bench/bench_fp16_det.py   (needs rapidocr-onnxruntime, the dev extra)
Prints per page: cosine and pixel F1 (probability map > 0.3) of each candidate vs FP32.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import ENTRIES, normalize, text_lines  # noqa: E402


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def pixel_f1(ref: np.ndarray, cand: np.ndarray, t: float = 0.3) -> float:
    r, c = ref > t, cand > t
    return float(2 * (r & c).sum() / max(r.sum() + c.sum(), 1))


def main() -> None:
    import onnx

    import trtbuild
    from trtbuild.config import Fp16Settings
    from trtbuild.onnx import io
    from trtbuild.passes import fold_batchnorm
    from trtbuild.quant import fp16
    from trtbuild.quant.fp16_range import range_keeps

    source = next(e for e in ENTRIES if e.name == "ppocr_det").locate()
    with tempfile.TemporaryDirectory() as d:
        trtbuild.clean(source, Path(d) / "det.clean.onnx")
        model = onnx.load(str(Path(d) / "det.clean.onnx"))
    lines, _ = text_lines(12, 40, 320, seed=5)
    blank = np.full((160, 320, 3), 255, np.uint8)
    pages = [normalize(np.vstack([lines[(i + k) % 12] for k in range(4)] + [blank]))
             for i in range(8)]
    s = Fp16Settings()
    folded, n_folded = fold_batchnorm(model)
    keeps = range_keeps(folded, s, [{"x": p} for p in pages[:4]])  # probe on 4, score on 8
    candidates = {"ORT FP16 kernels": io.session(fp16.convert(model, s)[0]),
                  "emulated, plain": io.session(fp16.emulated(model, s)),
                  "emulated, trtbuild": io.session(fp16.emulated(folded, s, frozenset(keeps)))}
    ref = io.session(model)
    print(f"BatchNormalization folded: {n_folded}; nodes kept FP32 by range: {len(keeps)}")
    scores = {name: [] for name in candidates}
    for page in pages:
        r = ref.run(None, {"x": page})[0]
        for name, sess in candidates.items():
            c = sess.run(None, {"x": page})[0]
            scores[name].append((cosine(r, c), pixel_f1(r, c)))
    for name, vals in scores.items():
        cos, f1 = np.mean(vals, axis=0)
        print(f"{name:<20} mean cosine {cos:.4f}  mean pixel F1 {f1:.4f}  ({len(vals)} pages)")


if __name__ == "__main__":
    main()
