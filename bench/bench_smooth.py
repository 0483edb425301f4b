"""SmoothQuant on or off (issue 18): plain `--int8` builds of transformers with
--smoothquant auto (the default) and off, scored against FP32 on the evaluation sets of
bench_int4.py (MiniLM: dev = the calibration generator, dev2 = sentences of the standard
library's comments, the set SmoothQuant was developed on; final and confirm = two more
generators, run for the final table only; the Llama-style decoder with random weights:
dev, final, confirm), with 95% bootstrap intervals.

Usage: .venv/bin/python bench/bench_smooth.py [--models minilm decoder]
           [--sets dev final confirm] [--work DIR]

Every INT8 model is scored as an FP16 engine computes it (bench_accuracy.as_engine_computes);
64 calibration samples of generator A (bench_int4.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_accuracy as ba  # noqa: E402
import bench_int4 as bi  # noqa: E402
from bench_independent import interval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "decoder"],
                    choices=["minilm", "decoder"])
    ap.add_argument("--sets", nargs="+", default=["dev", "final"],
                    choices=["dev", "dev2", "final", "confirm"])
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    import trtbuild

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_smooth_"))
    for name in args.models:
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        fp32, sets = (bi.minilm if name == "minilm" else bi.decoder)(folder)
        ba._write(folder / "calib", sets["calib"])
        names = [s for s in args.sets if s in sets]
        refs = {s: bi.run_all(fp32, sets[s]) for s in names}
        keys = ["cosine"] if name == "minilm" else ["top1", "kl"]
        print(f"\n## {name} ({bi.N_CAL} calibration samples, generator A; {bi.N_SET} per set)")
        print("| --smoothquant | " + " | ".join(f"{k} {s}" for s in names for k in keys)
              + " | calibrate stage | smoothed |")
        print("|---" * (1 + len(keys) * len(names)) + "|---|---|")
        for mode in ("off", "auto"):
            out = folder / f"int8_{mode}"
            start = time.perf_counter()
            result = trtbuild.build(str(fp32), out, int8=True, calib=str(folder / "calib"),
                                    target="onnx", cache=False, smoothquant=mode)
            seconds = time.perf_counter() - start
            calib = result.stage("calibrate")
            smooth = calib.get("smoothquant", {})
            emulated = ba.as_engine_computes(out / "model.int8.onnx")
            cells = []
            for s in names:
                per = bi.scores(name, refs[s], bi.run_all(emulated, sets[s]))
                for k in keys:
                    mean, lo, hi = interval(per[k])
                    cells.append(f"{mean:.4f} [{lo:.4f}, {hi:.4f}]")
            print(f"| {mode} | " + " | ".join(cells)
                  + f" | {calib['seconds']:.1f} s (build {seconds:.1f} s) | "
                  + (f"{smooth['smoothed']}/{smooth['activations']} activations, alpha median "
                     f"{smooth['alpha_median']}" if smooth.get("applied") else "-") + " |",
                  flush=True)
    print(f"\nwork dir: {work}")


if __name__ == "__main__":
    main()
