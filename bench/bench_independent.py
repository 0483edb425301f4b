"""INT8 accuracy on data other generators made (issue 18): one model, calibrated on one
generator's samples, scored against FP32 on three evaluation sets, with 95% bootstrap
intervals, for each set of build options.

Usage: .venv/bin/python bench/bench_independent.py MODEL CALIB [LABEL=OPTIONS ...]
           [--calib-seed N] [--work DIR]
  MODEL   rec (PP-OCRv4 rec, strings equal to FP32), yolo (YOLOv8n from nudenet,
          detection F1 against FP32), det (PP-OCRv4 det on pages of text lines, box F1
          against FP32) or cls (PP-OCR's 0/180 degree text classifier, top-1 agreement)
  CALIB   the generator of the 64 calibration samples: A (the one bench_accuracy.py uses),
          dev or final (tests/corpus: OTHER_TEXT, OTHER_PHOTOS)
  LABEL=OPTIONS  api.build keywords as a Python dict, e.g. "on={'bias_correction':'on'}";
          default: off and on for --bias-correction

Evaluation sets, 200 samples each: A (calibration's generator, another seed), dev (may be
looked at while developing), final (only for final tables). Every candidate is its written
model.int8.onnx run as an FP16 engine computes it (bench_accuracy.as_engine_computes).
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
import bench_accuracy as ba  # noqa: E402
from corpus import (  # noqa: E402
    normalize,
    other_photos,
    other_text_crops,
    photos,
    text_crops,
    yolo_input,
)

SETS = {"A": 202, "dev": 7, "final": 11}  # evaluation set -> seed


def rec_samples(generator: str, n: int, seed: int) -> list[dict]:
    xs = (text_crops(n, 48, 320, seed=seed)[0] if generator == "A"
          else other_text_crops(n, 48, 320, generator, seed=seed)[0])
    return [{"x": x} for x in xs]


def cls_samples(generator: str, n: int, seed: int) -> list[dict]:
    """Text crops 48x192, every other one turned 180 degrees (what the classifier decides)."""
    xs = (text_crops(n, 48, 192, seed=seed)[0] if generator == "A"
          else other_text_crops(n, 48, 192, generator, seed=seed)[0])
    return [{"x": x[..., ::-1, ::-1].copy() if k % 2 else x} for k, x in enumerate(xs)]


def det_samples(generator: str, n: int, seed: int) -> list[dict]:
    """320x320 pages of four text lines (A: bench_accuracy's pages; others: that generator's
    40x320 crops on a white page at random offsets)."""
    if generator == "A":
        return [{"x": normalize(p)} for p in ba.text_pages(n, seed)]
    lines = other_text_crops(4 * n, 40, 320, generator, seed=seed)[0]
    rng = np.random.default_rng(seed)
    pages = []
    for k in range(n):
        page = np.ones((1, 3, 320, 320), np.float32)  # white, normalized
        for j in range(4):
            y = 16 + j * 64 + int(rng.integers(0, 16))
            page[..., y:y + 40, :] = lines[4 * k + j]
        pages.append({"x": page})
    return pages


def top1_agreement(ref: dict, cand: dict, names: list) -> float:
    """One sample: does the candidate's most likely class equal FP32's?"""
    return float(np.argmax(ref[names[0]]) == np.argmax(cand[names[0]]))


def yolo_samples(generator: str, n: int, seed: int) -> list[dict]:
    imgs = photos(n, 320, seed=seed) if generator == "A" else other_photos(n, 320, generator,
                                                                           seed=seed)
    return [{"images": yolo_input(p)} for p in imgs]


MODELS = {  # name -> (corpus entry, samples, metric plugin, its key, plugin file)
    "rec": ("ppocr_rec", rec_samples, "ctc_strings", "strings_equal", ba.METRICS),
    "yolo": ("yolov8n_nudenet", yolo_samples, "detections_f1", "det_f1", ba.YOLO_METRICS),
    "det": ("ppocr_det", det_samples, "det_f1", "box_f1", ba.METRICS),
    "cls": ("ppocr_cls", cls_samples, None, "top-1 agreement", None),
}


def interval(per: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of 2000 bootstrap means)."""
    rng = np.random.default_rng(seed)
    means = [np.nanmean(per[rng.integers(0, len(per), len(per))]) for _ in range(2000)]
    return float(np.nanmean(per)), float(np.percentile(means, 2.5)), \
        float(np.percentile(means, 97.5))


def per_sample(score, ref: dict, cand: dict) -> np.ndarray:
    names = list(ref)
    n = len(ref[names[0]])
    return np.array([score({k: ref[k][i:i + 1] for k in names},
                           {k: cand[k][i:i + 1] for k in names}, names) for i in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("calib", choices=("A", "dev", "final"))
    ap.add_argument("runs", nargs="*", metavar="LABEL=OPTIONS")
    ap.add_argument("--calib-seed", type=int, default=1)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS),
                    help="evaluation sets to run (default all; develop without final)")
    args = ap.parse_args()
    from trtbuild import api

    entry, samples, fn, key, plugin = MODELS[args.model]
    score = ba._plugin_scorer(fn, key, plugin) if fn else top1_agreement
    runs = args.runs or ["off={'bias_correction':'off'}", "on={'bias_correction':'on'}"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        calib = work / "calib"
        ba._write(calib, samples(args.calib, 64, args.calib_seed))
        fp32 = ba._source(entry)
        sets = {name: samples(name, 200, seed) for name, seed in SETS.items()
                if name in args.sets}
        refs = {name: ba.run_all(fp32, feeds) for name, feeds in sets.items()}
        print(f"{args.model}, calibrated on 64 samples of {args.calib} (seed {args.calib_seed}); "
              f"{key} against FP32, 200 samples per set, [95% bootstrap interval]")
        for spec in runs:
            label, _, options = spec.partition("=")
            out = work / f"o_{label}"
            start = time.perf_counter()
            api.build(str(fp32), out, int8=True, calib=str(calib), target="onnx", cache=False,
                      shapes=ba._shapes(entry), **(ast.literal_eval(options) if options else {}))
            seconds = time.perf_counter() - start
            model = ba.as_engine_computes(out / "model.int8.onnx")
            cells = [f"{name} {m:.3f} [{lo:.3f}, {hi:.3f}]" for name, (m, lo, hi) in (
                (name, interval(per_sample(score, refs[name], ba.run_all(model, feeds))))
                for name, feeds in sets.items())]
            print(f"| {label} | {seconds:.1f} s | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
