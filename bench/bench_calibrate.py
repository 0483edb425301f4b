"""`trtbuild calibrate` against the floor (one plain ONNX Runtime pass) and ORT's entropy
quantize_static, on torchvision resnet18 (random weights, random 1x3x224x224 inputs).

Usage: .venv/bin/python bench/bench_calibrate.py [--samples 128 512] [--no-peer]
Prints wall times, peak RSS and the ratios issue #4 sets:
  trtbuild(512) / floor(512) <= 1.6        whole process: start-up, reading .npy, writing
  ort_entropy(128) / trtbuild(128) >= 3
  rss(512) / rss(128) <= 1.2, and rss(128) < ORT's rss(128)
The peer runs ../shared/bench/peer_ort_entropy.py (in-memory random data, like the floor).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "bench" / "peer_ort_entropy.py"


def make_model(tmp: Path) -> Path:
    import torch
    import torchvision

    from trtbuild.stages.clean import clean

    torch.manual_seed(0)
    raw = tmp / "resnet18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 224, 224),),
                          str(raw), input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    clean(raw, tmp / "resnet18.clean.onnx")
    return tmp / "resnet18.clean.onnx"


def make_samples(folder: Path, n: int) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = [rng.random((1, 3, 224, 224), dtype=np.float32) for _ in range(n)]
    for i, x in enumerate(data):
        np.save(folder / f"{i:05d}.npy", x)
    os.sync()  # no write-back of fresh samples during the timed runs
    return data


def floor(model: Path, data: list[np.ndarray]) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    for x in data:
        sess.run(None, {"input": x})
    return time.perf_counter() - t


def timed_process(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one child process.

    Peak RSS comes from GNU time when installed: a child forked from this (large) process
    inherits its RSS in ru_maxrss, which would add about 400 MB to every figure. Without
    GNU time, os.wait4's rusage is used (an upper bound)."""
    gnu_time = Path("/usr/bin/time").exists()
    with tempfile.NamedTemporaryFile("r") as rss_file:
        full = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd] if gnu_time else cmd
        t = time.perf_counter()
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{out}")
        rss_kb = int(rss_file.read().strip().splitlines()[-1]) if gnu_time else usage.ru_maxrss
    return wall, rss_kb / 1024, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    trt = [sys.executable, "-m", "trtbuild", "calibrate"]
    rows: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(tmp)
        for n in args.samples:
            data = make_samples(tmp / f"s{n}", n)
            r = rows[n] = {"floor": floor(model, data)}
            del data
            r["trt"], r["trt_rss"], _ = timed_process(
                [*trt, str(model), "--calib", str(tmp / f"s{n}"), "-o", str(tmp / f"o{n}"),
                 "--no-cache"])
            if not args.no_peer and n <= 128 and PEER.is_file():
                _, r["peer_rss"], out = timed_process(
                    [sys.executable, str(PEER), str(model), str(n), "3", "224", "224"])
                r["peer"] = float(re.search(r"ort_entropy_s=([\d.]+)", out).group(1))
                r["peer_floor"] = float(re.search(r"infer_pass_s=([\d.]+)", out).group(1))
            print(f"n={n}: " + ", ".join(f"{k}={v:.2f}" for k, v in r.items()), flush=True)
    ok = True
    small, big = min(rows), max(rows)
    print(f"\n{'samples':>8}{'floor s':>9}{'trtbuild s':>11}{'ratio':>7}{'rss MB':>8}"
          f"{'ort s':>8}{'ort MB':>8}")
    for n, r in rows.items():
        print(f"{n:>8}{r['floor']:>9.2f}{r['trt']:>11.2f}{r['trt'] / r['floor']:>7.2f}"
              f"{r['trt_rss']:>8.0f}{r.get('peer', float('nan')):>8.2f}"
              f"{r.get('peer_rss', float('nan')):>8.0f}")
    if big >= 512:
        ratio = rows[big]["trt"] / rows[big]["floor"]
        ok &= ratio <= 1.6
        print(f"trtbuild({big}) / floor({big}) = {ratio:.2f}  (target <= 1.6)")
    if "peer" in rows[small]:
        speed = rows[small]["peer"] / rows[small]["trt"]
        ok &= speed >= 3 and rows[small]["trt_rss"] < rows[small]["peer_rss"]
        print(f"ort_entropy({small}) / trtbuild({small}) = {speed:.2f}  (target >= 3)")
        print(f"rss trtbuild({small}) = {rows[small]['trt_rss']:.0f} MB vs ORT "
              f"{rows[small]['peer_rss']:.0f} MB")
    if big != small:
        growth = rows[big]["trt_rss"] / rows[small]["trt_rss"]
        ok &= growth <= 1.2
        print(f"rss trtbuild({big}) / trtbuild({small}) = {growth:.2f}  (target <= 1.2)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
