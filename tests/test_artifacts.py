"""Every ONNX file trtbuild writes passes the ONNX checker and runs in ONNX Runtime
(issue 19): random conv graphs through every CPU stage here; the shipped models and the
torchvision architectures in test_corpus.py use `assert_artifacts_run` as well."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = ("Relu", "Sigmoid", "LeakyRelu", "Tanh", "HardSigmoid")


CHECK = """
import sys
import numpy as np, onnx, onnxruntime as ort
from trtbuild.config import DataSettings
from trtbuild.data import open_dataset
from trtbuild.onnx.inputs import random_feed

out, dim, data = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
for name in sys.argv[4:]:
    path = f"{out}/{name}"
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    # ORT 1.32 segfaults at its default level on Transpose[1,0,2] -> Cast -> MatMul, a Cast it
    # inserts itself before an FP16 MatMul (any FP16 ViT): trtbuild's sessions turn that
    # fusion off (io.ort_workarounds), and so does this check
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["MatmulTransposeFusion"])
    feed = next(open_dataset(data, model, DataSettings()).samples())[1] if data else \\
        random_feed(model, batch=2, dim=dim)
    results = sess.run(None, feed)
    assert results and all(np.asarray(r).size for r in results), name
    print(name, "ok", flush=True)
"""


def assert_artifacts_run(out: Path, dim: int = 8, data: Path | None = None) -> list[str]:
    """Each *.onnx in `out`: onnx.checker (full check, shapes inferred) and one ONNX Runtime
    run, on the first sample of `data` (a directory trtbuild reads) or on random inputs
    (symbolic dims `dim`), in a child process (a crash in ONNX Runtime is a failure here,
    not the end of the test session); returns the names checked."""
    import subprocess
    import sys

    names = sorted(p.name for p in out.glob("*.onnx"))
    proc = subprocess.run([sys.executable, "-c", CHECK, str(out), str(dim), str(data or ""),
                           *names], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout}{proc.stderr[-2000:]}"
    assert proc.stdout.split() == [x for n in names for x in (n, "ok")]
    return names


def random_graph(seed: int) -> onnx.ModelProto:
    """A small conv net drawn from `seed`: convs (1x1, 3x3, depthwise), BatchNorm,
    activations, residual adds, a concat, pooling, then a Gemm head; dynamic batch."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    width, x = 3, "x"

    def weight(name: str, shape: tuple) -> str:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name))
        return name

    for k in range(int(rng.integers(3, 6))):
        kind = rng.choice(["conv1", "conv3", "depthwise"]) if k else "conv3"
        out_w = width if kind == "depthwise" else int(rng.choice([4, 8, 12]))
        group = width if kind == "depthwise" else 1
        size = 1 if kind == "conv1" else 3
        y = f"c{k}"
        nodes.append(helper.make_node(
            "Conv", [x, weight(f"w{k}", (out_w, width // group, size, size)),
                     weight(f"b{k}", (out_w,))], [y], pads=[size // 2] * 4, group=group))
        if rng.random() < 0.5:
            inits.append(numpy_helper.from_array(rng.uniform(0.5, 2, out_w).astype(np.float32),
                                                 f"bn{k}_v"))  # variances: positive
            nodes.append(helper.make_node("BatchNormalization", [
                y, *(weight(f"bn{k}_{p}", (out_w,)) for p in "sbm"), f"bn{k}_v"], [f"{y}n"]))
            y = f"{y}n"
        act = str(rng.choice(ACTIVATIONS))
        nodes.append(helper.make_node(act, [y], [f"{y}a"]))
        y = f"{y}a"
        if out_w == width and k and rng.random() < 0.6:  # residual
            nodes.append(helper.make_node("Add", [x, y], [f"{y}r"]))
            y = f"{y}r"
        elif k and rng.random() < 0.3:  # a branch concatenated with its input
            nodes.append(helper.make_node("Concat", [x, y], [f"{y}cat"], axis=1))
            y, out_w = f"{y}cat", out_w + width
        x, width = y, out_w
    nodes += [helper.make_node(str(rng.choice(["MaxPool", "AveragePool"])), [x], ["p"],
                               kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("GlobalAveragePool", ["p"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", weight("head_w", (10, width)), weight("head_b", (10,))],
                               ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, f"random{seed}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("seed", range(8))
def test_every_artifact_of_a_random_graph_runs(seed, tmp_path):
    import trtbuild.api as api

    path = tmp_path / "m.onnx"
    onnx.save(random_graph(seed), str(path))
    rng = np.random.default_rng(seed)
    for split, n in (("calib", 16), ("val", 8)):
        (tmp_path / split).mkdir()
        for i in range(n):
            np.save(tmp_path / split / f"{i}.npy", rng.random((1, 3, 8, 8), dtype=np.float32))
    api.build(str(path), tmp_path / "o", cache=False, fp16=True, int8=True, fp8=True,
              calib=str(tmp_path / "calib"), val=str(tmp_path / "val"), target="onnx",
              min_cosine=0.0, min_top1_agreement=0.0)
    assert assert_artifacts_run(tmp_path / "o") == [
        "model.clean.onnx", "model.fp16.onnx", "model.fp8.onnx", "model.int8.onnx",
        "model.onnx"]


def _transpose_matmul(dtype: int) -> onnx.ModelProto:
    """Transpose(perm [1,0,2]) -> MatMul with a constant weight: torchvision's attention in
    FP16, which ONNX Runtime 1.32's CPU provider crashed on at session creation."""
    np_type = {TensorProto.FLOAT16: np.float16, TensorProto.FLOAT: np.float32}[dtype]
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.1, (8, 16)).astype(np_type), "w")
    g = helper.make_graph([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
                           helper.make_node("MatMul", ["t", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", dtype, [2, 4, 8])],
                          [helper.make_tensor_value_info("y", dtype, [4, 2, 16])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_trtbuild_sessions_load_an_fp16_transpose_matmul(tmp_path):
    """Every way trtbuild makes an ONNX Runtime session (a ModelProto, bytes, a file, the
    bench's) loads and runs the pattern; in a child process, as a crash would end pytest."""
    import subprocess
    import sys

    from trtbuild.onnx import io

    onnx.save(_transpose_matmul(TensorProto.FLOAT16), str(tmp_path / "m.onnx"))
    assert io.ort_workarounds(tmp_path / "m.onnx") == ["MatmulTransposeFusion"]
    assert io.ort_workarounds(_transpose_matmul(TensorProto.FLOAT)) == []  # fused, no crash
    code = f"""
import numpy as np, onnx
from trtbuild.onnx import io
path = {str(tmp_path / "m.onnx")!r}
x = {{"x": np.ones((2, 4, 8), np.float16)}}
for model in (onnx.load(path), open(path, "rb").read(), path):
    assert io.session(model).run(None, x)[0].shape == (4, 2, 16)
print(io.session(path, disabled=io.ort_workarounds(path)).run(None, x)[0].shape)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "(4, 2, 16)", proc.stderr[-2000:]
