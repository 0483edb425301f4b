"""Every model of the real-model corpus through `trtbuild --fp16 --int8`, as a table.

Usage: .venv/bin/python bench/corpus_table.py [--torchvision] [--out DIR]
Prints one row per model: exit code, what clean prepared, FP16 and INT8 mean cosine vs FP32
on the held-out samples (ONNX Runtime, CPU), the FP16 check used, and the engines built
(TensorRT-RTX, sm_86) or the one-line reason there are none.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import ENTRIES, write_all  # noqa: E402

TORCHVISION = ["efficientnet_b0", "mobilenet_v2", "convnext_tiny", "vit_b_16", "swin_t",
               "regnet_y_400mf", "densenet121", "shufflenet_v2_x1_0", "fcn_resnet50",
               "deeplabv3_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"]


def run(src: str, data: Path, out: Path, flags: list[str]) -> dict:
    cmd = [sys.executable, "-m", "trtbuild", src, "--fp16", "--int8", "--calib", str(data / "calib"),
           "--val", str(data / "val"), "--arch", "sm_86", "--out", str(out), "--cache-dir",
           str(out.parent / "cache"), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    stages = {}
    if (out / "report.json").is_file():
        stages = {s["stage"]: s for s in json.loads((out / "report.json").read_text())["stages"]}
    cos = lambda s: min((o["cosine_mean"] for o in s.get("outputs", {}).values()),  # noqa: E731
                        default=float("nan"))
    build = stages.get("build", {})
    return {"exit": proc.returncode,
            "prepared": ", ".join(stages.get("clean", {}).get("prepared", [])) or "-",
            "fp16_cos": cos(stages.get("fp16", {})), "int8_cos": cos(stages.get("validate", {})),
            "fp16_check": stages.get("fp16", {}).get("cpu_check", "-")[:40],
            "engines": ", ".join(f"{e['precision']}@{e['arch']}" for e in build.get("engines", []))
                       or (proc.stderr.strip().splitlines() or ["-"])[-1][:110]}


def images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(folder / f"{i}.npy", rng.random((1, 3, 224, 224), dtype=np.float32))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--torchvision", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="corpus-")))
    args = ap.parse_args()
    write_all(args.out / "data")
    rows = []
    for e in ENTRIES:
        if e.locate():
            rows.append((e.name, run(str(e.locate()), args.out / "data" / e.name,
                                     args.out / e.name, e.flags)))
    if args.torchvision:
        images(args.out / "data" / "tv" / "calib", 4)
        images(args.out / "data" / "tv" / "val", 2)
        for name in TORCHVISION:
            rows.append((name, run(f"torchvision:{name}", args.out / "data" / "tv",
                                   args.out / name, [])))
    print("| model | exit | clean prepared | FP16 cos | INT8 cos | FP16 check | engines |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['exit']} | {r['prepared']} | {r['fp16_cos']:.4f} | "
              f"{r['int8_cos']:.4f} | {r['fp16_check']} | {r['engines']} |")


if __name__ == "__main__":
    main()
