"""The whole default INT8 pipeline against one plain ONNX Runtime pass (issue 17).

Usage: .venv/bin/python bench/bench_pipeline.py [--models resnet18 fcn_resnet50]
For each torchvision model (random weights, seeded; random 1x3x224x224 samples as .npy):
  floor     one ONNX Runtime session (CPU) running the FP32 model over calib + val, batch 16
  first     `trtbuild MODEL.onnx --int8 --calib C --val V --target onnx` with an empty cache
  rerun     the same command again (the stage cache)
  bad arch  `--target engine --arch sm_99` (fails before any stage; needs tensorrt-rtx)
  bad size  calibration samples of 1x3x200x200 (fails before any stage)
and prints the stage times and the ratios the issue sets: first / floor <= 3, first < 300 s,
rerun / first < 0.1, the bad runs < 3 s. Each trtbuild run is a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SAMPLES = {"resnet18": (128, 64), "fcn_resnet50": (48, 16)}


def make_model(name: str, path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs = {"weights_backbone": None, "aux_loss": False} if name.startswith("fcn") else {}
    model = getattr(torchvision.models.segmentation if name.startswith("fcn") else
                    torchvision.models, name)(**kwargs).eval()

    class Plain(torch.nn.Module):  # segmentation models return a dict
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            y = self.m(x)
            return y["out"] if isinstance(y, dict) else y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Plain(model), (torch.randn(1, 3, 224, 224),), str(path),
                          input_names=["input"], output_names=["output"], opset_version=17,
                          dynamo=False, dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})


def make_samples(folder: Path, n: int, seed: int, size: int = 224) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.save(folder / f"{i:05d}.npy", rng.random((1, 3, size, size), dtype=np.float32))


def floor(model: Path, folders: list[Path]) -> float:
    """One plain pass: session creation plus every sample, batch 16."""
    import onnxruntime as ort

    files = [f for d in folders for f in sorted(d.glob("*.npy"))]
    t = time.perf_counter()
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for i in range(0, len(files), 16):
        sess.run(None, {"input": np.concatenate([np.load(f) for f in files[i:i + 16]])})
    return time.perf_counter() - t


def trtbuild(*args: str, expect: int = 0) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trtbuild", *args], capture_output=True,
                          text=True)
    wall = time.perf_counter() - t
    if proc.returncode != expect:
        raise SystemExit(f"exit {proc.returncode}, expected {expect}: {' '.join(args)}\n"
                         f"{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout + proc.stderr


def run_model(name: str, tmp: Path) -> dict:
    n_calib, n_val = SAMPLES[name]
    model, calib, val, cache = tmp / f"{name}.onnx", tmp / "calib", tmp / "val", tmp / "cache"
    make_model(name, model)
    make_samples(calib, n_calib, 0)
    make_samples(val, n_val, 1)
    os.sync()
    r = {"floor": floor(model, [calib, val])}
    cmd = [str(model), "--int8", "--calib", str(calib), "--val", str(val), "--target", "onnx",
           "--cache-dir", str(cache)]
    r["first"], _ = trtbuild(*cmd, "--out", str(tmp / "o1"))
    report = json.loads((tmp / "o1" / "report.json").read_text())
    r["stages"] = {s["stage"]: s["seconds"] for s in report["stages"]}
    r["rounding"] = next(s for s in report["stages"] if s["stage"] == "quantize")[
        "weight_rounding"]
    r["cosine"] = next(s for s in report["stages"] if s["stage"] == "validate")[
        "outputs"]["output"]["cosine_mean"]
    r["rerun"], out = trtbuild(*cmd, "--out", str(tmp / "o2"))
    r["reused"] = out.count("(reused from the cache)")
    try:
        import tensorrt_rtx  # noqa: F401
        r["bad_arch"], _ = trtbuild(str(model), "--target", "engine", "--arch", "sm_99",
                                    "--out", str(tmp / "o3"), expect=3)
    except ImportError:
        pass
    make_samples(tmp / "small", 4, 2, size=200)
    r["bad_size"], _ = trtbuild(str(model), "--int8", "--calib", str(tmp / "small"),
                                "--target", "onnx", "--out", str(tmp / "o4"), expect=2)
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet18"], choices=list(SAMPLES))
    args = ap.parse_args()
    ok = True
    for name in args.models:
        tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
        try:
            r = run_model(name, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        ratio, again = r["first"] / r["floor"], r["rerun"] / r["first"]
        per_layer = r["rounding"].get("per_layer", {})
        blocked = sum("blocks" in v for v in per_layer.values())
        print(f"\n{name} ({'+'.join(map(str, SAMPLES[name]))} samples)")
        print("  stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["stages"].items()))
        print(f"  gptq: {r['rounding'].get('layers')} of {r['rounding'].get('candidates')} "
              f"layers ({blocked} in blocks), int8 cosine {r['cosine']:.4f}")
        print(f"  floor {r['floor']:.2f}s  first {r['first']:.2f}s  ratio {ratio:.2f} "
              "(target <= 3, first < 300 s)")
        print(f"  rerun {r['rerun']:.2f}s ({r['reused']} stages reused)  rerun / first "
              f"{again:.3f} (target < 0.1)")
        bad = {k: r[k] for k in ("bad_arch", "bad_size") if k in r}
        print("  " + "  ".join(f"{k} {v:.2f}s" for k, v in bad.items()) + " (target < 3 s)")
        ok &= ratio <= 3 and r["first"] < 300 and again < 0.1 and all(
            v < 3 for v in bad.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
