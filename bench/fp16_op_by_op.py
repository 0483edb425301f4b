"""Which FP16 answer to trust: trtbuild's emulation, ONNX Runtime's FP16 kernels on the whole
written graph, or the same kernels one node at a time (issue 18, item 3).

Usage: .venv/bin/python bench/fp16_op_by_op.py OUT DIR [DIR ...] [--chunk N]
  OUT  a `trtbuild MODEL --fp16 --target onnx` output folder (model.clean.onnx and
       model.fp16.onnx); DIR  folders of .npy samples for the model's single input;
  --chunk N  samples run at a time (default 8; every tensor of a chunk is held twice:
       DNSMOS needs 1)

For each DIR, against the FP32 model (ONNX Runtime):
  whole-graph  model.fp16.onnx in one ONNX Runtime session. Its CPU provider runs most ops
               in FP32 between Casts it inserts, then removes Cast pairs between such ops,
               so many FP16 tensors are never rounded to FP16.
  emulated     trtbuild.quant.emulate.emulate_typed(model.fp16.onnx): FP32 kernels, every
               float16 tensor rounded to FP16, what the build's checks run.
  op-by-op     every node of model.fp16.onnx in a session of its own, its outputs handed
               to the next nodes as the numpy arrays of their declared type (float16
               tensors stored as float16): FP16 storage between all ops, by other code than
               the emulator's.
It prints mean cosine, top-1 agreement and abs error vs FP32 for each, and the tensors where the
emulation and op-by-op differ most (max relative difference).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trtbuild.quant.emulate import emulate_typed  # noqa: E402

CHUNK = 8  # samples at a time: every tensor of a chunk is held twice


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class OpByOp:
    """Every node of a model in an ONNX Runtime session of its own (made once), run in
    order on the tensors as stored."""

    def __init__(self, model: onnx.ModelProto):
        m = onnx.shape_inference.infer_shapes(model)
        g = m.graph
        types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input,
                                                                *g.output]}
        inits = {i.name: i for i in g.initializer}
        self.steps = []
        for node in g.node:
            ins = list(dict.fromkeys(t for t in node.input if t and t not in inits))
            one = helper.make_graph(
                [node], "one", [helper.make_tensor_value_info(t, types[t], None) for t in ins],
                [helper.make_tensor_value_info(t, types.get(t, 0), None) for t in node.output],
                [inits[t] for t in dict.fromkeys(node.input) if t in inits])
            single = helper.make_model(one, opset_imports=m.opset_import)
            single.ir_version = m.ir_version
            self.steps.append((session(single), ins, list(node.output)))

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = dict(feed)
        for sess, ins, outs in self.steps:
            values.update(zip(outs, sess.run(None, {t: values[t] for t in ins})))
        return values


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a, b = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1)
    b = b.astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--chunk", type=int, default=CHUNK)
    args = ap.parse_args()
    out, dirs, chunk = args.out, args.dirs, args.chunk
    fp32 = onnx.load(out / "model.clean.onnx")
    fp16 = onnx.load(out / "model.fp16.onnx")
    emulated = emulate_typed(fp16)
    tapped = onnx.shape_inference.infer_shapes(emulated)
    types = {v.name: v.type.tensor_type.elem_type for v in tapped.graph.value_info}
    names = [o for n in fp16.graph.node for o in n.output]
    known = {o.name for o in tapped.graph.output}
    tapped.graph.output.extend(helper.make_tensor_value_info(t, types[t], None) for t in names
                               if t not in known and types.get(t))
    [x] = [i.name for i in fp32.graph.input]
    y = fp32.graph.output[0].name
    sessions = {"fp32": session(fp32), "whole-graph": session(fp16), "tapped": session(tapped)}
    op_by_op = OpByOp(fp16)
    for d in dirs:
        files = sorted(Path(d).glob("*.npy"))
        outs: dict[str, list] = {"fp32": [], "whole-graph": [], "emulated": [], "op-by-op": []}
        worst: dict[str, tuple[float, str]] = {}
        for k in range(0, len(files), chunk):  # every tensor of a chunk is kept: bound it
            xs = np.concatenate([np.load(f) for f in files[k:k + chunk]])
            emu_all = dict(zip([o.name for o in tapped.graph.output],
                               sessions["tapped"].run(None, {x: xs})))
            steps = op_by_op({x: xs})
            outs["fp32"].append(sessions["fp32"].run([y], {x: xs})[0])
            outs["whole-graph"].append(sessions["whole-graph"].run([y], {x: xs})[0])
            outs["emulated"].append(emu_all[y])
            outs["op-by-op"].append(steps[y])
            for t in names:
                if t in emu_all and t in steps and np.issubdtype(steps[t].dtype, np.floating):
                    a, b = np.asarray(emu_all[t], np.float64), steps[t].astype(np.float64)
                    if a.shape == b.shape and a.size:
                        with np.errstate(invalid="ignore", divide="ignore"):
                            rel = float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1e-3)))
                        worst[t] = max(worst.get(t, (0.0, "")), (rel, str(steps[t].dtype)))
            del emu_all, steps
        ref = np.concatenate(outs.pop("fp32"))
        print(f"{d} ({len(ref)} samples), vs FP32:")
        for label, o in outs.items():
            o = np.concatenate(o)
            err = np.abs(o.astype(np.float64) - ref)
            print(f"  {label:12} cosine {cosine(ref, o):.6f}  top-1 "
                  f"{np.mean(ref.argmax(1) == o.argmax(1)):.4f}  abs err mean "
                  f"{err.mean():.4f} max {err.max():.4f}")
        print("  emulated vs op-by-op, largest max relative differences:")
        for t, (rel, dtype) in sorted(worst.items(), key=lambda kv: -kv[1][0])[:5]:
            print(f"    {rel:.2e}  {t} ({dtype})")


if __name__ == "__main__":
    main()
