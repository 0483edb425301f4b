"""`trtbuild clean` against onnxslim: node counts, times, and output equality, side by side.

Usage: .venv/bin/python bench/bench_clean.py   (needs the dev extra: onnxslim)
Models: torchvision resnet18, mobilenet_v3_small (random weights, 1x3x224x224) and a 2-layer
nn.TransformerEncoder (d=128, 4 heads, seq 16), exported with the legacy exporter, opset 17,
dynamic batch - the same exports peers.md measured.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import torch

from trtbuild.stages.clean import clean_model, outputs_diff


def models() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    import torchvision

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(128, 4, 256, batch_first=True)
    return {
        "resnet18": (torchvision.models.resnet18(), torch.randn(1, 3, 224, 224)),
        "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small(), torch.randn(1, 3, 224, 224)),
        "transformer_encoder": (torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                                torch.randn(1, 16, 128)),
    }


def export(module: torch.nn.Module, x: torch.Tensor, path: Path) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return onnx.load(str(path))


def main() -> int:
    import onnxslim

    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name, (module, x) in models().items():
            model = export(module, x, Path(tmp) / f"{name}.onnx")
            t0 = time.perf_counter()
            ours, _ = clean_model(onnx.load(str(Path(tmp) / f"{name}.onnx")))
            t1 = time.perf_counter()
            slim = onnxslim.slim(onnx.load(str(Path(tmp) / f"{name}.onnx")))
            t2 = time.perf_counter()
            d_ours, d_slim = outputs_diff(model, ours, batch=3), outputs_diff(model, slim, batch=3)
            d_pair = outputs_diff(ours, slim, batch=3)
            n_ours, n_slim = len(ours.graph.node), len(slim.graph.node)
            ok &= n_ours <= n_slim and d_ours < 1e-4
            rows.append((name, len(model.graph.node), n_ours, n_slim, n_ours / n_slim,
                         t1 - t0, t2 - t1, d_ours, d_slim, d_pair))
    print(f"{'model':<22}{'orig':>6}{'trtbuild':>10}{'onnxslim':>10}{'ratio':>7}"
          f"{'t_ours':>8}{'t_slim':>8}{'diff_ours':>11}{'diff_slim':>11}{'ours~slim':>11}")
    for r in rows:
        print(f"{r[0]:<22}{r[1]:>6}{r[2]:>10}{r[3]:>10}{r[4]:>7.2f}{r[5]:>7.2f}s{r[6]:>7.2f}s"
              f"{r[7]:>11.1e}{r[8]:>11.1e}{r[9]:>11.1e}")
    print("PASS: node counts <= onnxslim, outputs unchanged" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
