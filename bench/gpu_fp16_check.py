"""Does trtbuild's FP16 emulation compute what real FP16 arithmetic on a GPU computes?
(issue #10 part 3: the fp16 stage checks accuracy on `trtbuild.quant.fp16.emulated`, not on
ONNX Runtime's CPU FP16 kernels, which compute in FP32 between casts and miss overflows.)

For each model (torchvision resnet18, random weights; a small conv net with a planted FP16
overflow, (300*h)^2/1000 as in tests/test_fp16.py; an nn.TransformerEncoderLayer at seq 64),
all seeded:
  export    trtbuild's export stage (legacy exporter, opset 17), then trtbuild's clean passes
  fp32      the cleaned FP32 model in ONNX Runtime CPU: the reference
  emulated  fp16.emulated(clean): what trtbuild's fp16 stage checks (FP32 kernels, every
            FP16 tensor and weight rounded to float16, overflow to inf)
  ort_fp16  fp16.convert(clean) run directly in ONNX Runtime CPU: what the old check trusted
  gpu_fp16  the torch model in .half() on CUDA with the same inputs: real FP16 arithmetic
  gpu_fp16_bnfold  (models with BatchNorm) the same after torch.fx's conv+BN fusion in FP32,
            as the ONNX export and TensorRT fold it: the FP16 rounding points are then those
            of the ONNX graph (plain .half() also rounds each conv's output before its BN)
  gpu_fp16_unfused  (encoder) .half() without the MHA fast path, SDPA math backend
  gpu_fp32  the torch model in FP32 on CUDA (TF32 off): a sanity check of the export
  stage_emulated  the fp16 stage's own path (BatchNormalization folded, nodes FP16 cannot
            hold kept in FP32 by the measured range, on the same input), emulated
Both FP16 graphs are converted without range keeps (keep_at empty), so that they compute
what torch's .half() computes; stage_emulated shows what the stage then does about it.

The verification, against the GPU run whose rounding points are the graph's (gpu_fp16_bnfold
where there is one, else gpu_fp16): mean |emulated - gpu| below mean |ort_fp16 - gpu|; the
emulation's error vs FP32 within TRACK of the GPU's (ORT's FP16 run understates it); and the
planted overflow shown as inf/nan in emulated at the positions gpu_fp16 shows it (ort_fp16,
the old check, shows none). Pointwise distances at the output of a deep network stay
bounded by 1-ulp rounding flips (different summation orders) that grow layer by layer, so
the error-size comparison is the sharper test there; all numbers are in the JSON.

Without CUDA the 'gpu' runs are torch on the CPU (float16 where torch supports it), labelled
so in the table. Writes $OUT/gpu_fp16_check.json when OUT is set (or --json PATH).
Exit status: 0 when every verdict holds, 1 when one fails or a model errors.

Usage: .venv/bin/python bench/gpu_fp16_check.py [--quick] [--models resnet18,overflow,encoder]
On the GPU machine: bench/gpu_run.sh
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FP16_MAX = 65504.0
VARIANTS = ("emulated", "ort_fp16", "gpu_fp16", "gpu_fp16_bnfold", "gpu_fp16_unfused",
            "gpu_fp32", "stage_emulated")
GPU_FP16 = ("gpu_fp16", "gpu_fp16_bnfold", "gpu_fp16_unfused")
TRACK = (2 / 3, 1.5)  # emulated's mean error vs FP32 within this factor of the GPU's


# ----------------------------------------------------------------------------- models

def _models(quick: bool) -> dict[str, Any]:
    """{name: (builder, input shape, note)}; builders seed torch themselves."""
    import torch
    from torch import nn

    def resnet18() -> nn.Module:
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None).eval()

    class Overflow(nn.Module):
        """Conv-BN-ReLU, then (300*h)^2/1000 as tests/test_fp16.py's _square_model: with
        300*h past 256 the square is past 65504, inf in FP16 (finite, <= ~1e3, in FP32)."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.bn(self.stem(x)))
            h = h * 300.0
            h = h * h        # the planted overflow
            h = h / 1000.0
            return self.head(h)

    def overflow() -> nn.Module:
        torch.manual_seed(1)
        m = Overflow().eval()
        with torch.no_grad():  # non-trivial running stats, so BN is more than an identity
            m.bn.running_mean.uniform_(-0.1, 0.1)
            m.bn.running_var.uniform_(0.5, 1.5)
        return m

    class Encoder(nn.Module):
        """nn.TransformerEncoderLayer with is_causal given: the legacy exporter traces the
        default into a tensor and fails in scaled_dot_product_attention (torch 2.14)."""

        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.1,
                                                    batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x, src_mask=None, is_causal=False)

    def encoder() -> nn.Module:
        torch.manual_seed(2)
        return Encoder().eval()

    return {
        "resnet18": (resnet18, (1 if quick else 4, 3, 224, 224),
                     "torchvision resnet18, random weights (seed 0)"),
        "overflow": (overflow, (2, 3, 32, 32),
                     "conv-bn-relu, (300*h)^2/1000, 1x1 conv: planted FP16 overflow"),
        "encoder": (encoder, (1 if quick else 2, 64, 256),
                    "nn.TransformerEncoderLayer(256, 8 heads, ff 1024), batch_first, seq 64"),
    }


# ----------------------------------------------------------------------------- metrics

def _flat(outs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(o, np.float64).ravel() for o in outs])


def _cos(a: np.ndarray, b: np.ndarray) -> float | None:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if not a.size or na == 0 or nb == 0:
        return None
    return float(a @ b / (na * nb))


def vs_reference(y: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Error against the FP32 reference. max_abs_err and cosine_finite are over the
    positions where both are finite; cosine is over all (None when any is inf/nan)."""
    fin_y = np.isfinite(y)
    both = fin_y & np.isfinite(ref)
    d = np.abs(y[both] - ref[both])
    return {"max_abs_err": float(d.max()) if d.size else None,
            "mean_abs_err": float(d.mean()) if d.size else None,
            "cosine": _cos(y, ref) if fin_y.all() else None,
            "cosine_finite": _cos(y[both], ref[both]),
            "nonfinite": int((~fin_y).sum()), "nan": int(np.isnan(y).sum()),
            "inf": int(np.isinf(y).sum()), "size": int(y.size),
            "max_abs": float(np.abs(y[fin_y]).max()) if fin_y.any() else None}


def vs_gpu(y: np.ndarray, g: np.ndarray) -> dict[str, Any]:
    """Distance to the GPU's FP16 output: abs differences where both are finite, and the
    positions where one is finite and the other not."""
    fy, fg = np.isfinite(y), np.isfinite(g)
    both = fy & fg
    d = np.abs(y[both] - g[both])
    return {"max_abs_diff": float(d.max()) if d.size else None,
            "mean_abs_diff": float(d.mean()) if d.size else None,
            "nonfinite_mismatch": int((fy != fg).sum()),
            "nonfinite_both": int((~fy & ~fg).sum())}


# ----------------------------------------------------------------------------- runs

def _export(name: str, module: Any, x: Any, path: Path) -> tuple[Any, str]:
    """trtbuild's export stage (what `trtbuild build SRC` does), then its clean passes."""
    import onnx

    from trtbuild.config import ExportSettings
    from trtbuild.onnx.source import Source
    from trtbuild.stages import export
    from trtbuild.stages.clean import clean_model, prepare

    how = "trtbuild export stage (torch.onnx.export dynamo=False, opset 17) + clean passes"
    try:
        export.export(Source(f"gpu_fp16_check:{name}", "torch", name, module=module,
                             example_inputs=(x,)), path, ExportSettings())
    except Exception as e:  # noqa: BLE001 - fall back to a plain export, and say so
        import torch

        how = f"plain torch.onnx.export (trtbuild export failed: {str(e).splitlines()[0][:200]})"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), str(path), input_names=["input"],
                              output_names=["output"], opset_version=17,
                              do_constant_folding=True, dynamo=False)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    clean, _ = clean_model(prepare(model)[0])
    return clean, how


def _ort(model: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    from trtbuild.onnx import io

    return io.run(io.session(model), feed, "gpu_fp16_check")


def _torch_runs(module: Any, x: Any, dev: str, name: str) -> dict[str, Any]:
    """{variant: [outputs] or error string} for torch FP32 and FP16 on `dev`."""
    import torch

    out: dict[str, Any] = {}

    def run(m: Any, inp: Any) -> list[np.ndarray]:
        with torch.no_grad():
            y = m(inp)
        if dev == "cuda":
            torch.cuda.synchronize()
        ys = y if isinstance(y, (list, tuple)) else [y]
        return [t.detach().float().cpu().numpy() for t in ys]

    try:
        out["gpu_fp32"] = run(copy.deepcopy(module).float().to(dev), x.to(dev))
    except Exception as e:  # noqa: BLE001
        out["gpu_fp32"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    m16 = copy.deepcopy(module).half().to(dev)
    x16 = x.half().to(dev)
    try:
        out["gpu_fp16"] = run(m16, x16)
    except Exception as e:  # noqa: BLE001 - e.g. an op with no float16 CPU kernel
        out["gpu_fp16"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        try:  # conv+BN folded in FP32 first, as the ONNX export and TensorRT do
            from torch.fx.experimental.optimization import fuse

            out["gpu_fp16_bnfold"] = run(fuse(copy.deepcopy(module)).half().to(dev), x16)
        except Exception as e:  # noqa: BLE001
            out["gpu_fp16_bnfold"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if name == "encoder":  # op by op, as the ONNX graph: no fused MHA fast path, math SDPA
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            fast = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                with sdpa_kernel(SDPBackend.MATH):
                    out["gpu_fp16_unfused"] = run(m16, x16)
            finally:
                torch.backends.mha.set_fastpath_enabled(fast)
        except Exception as e:  # noqa: BLE001
            out["gpu_fp16_unfused"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return out


def check_model(name: str, build: Any, shape: tuple, note: str, dev: str,
                tmp: Path) -> dict[str, Any]:
    import torch

    from trtbuild.config import Fp16Settings
    from trtbuild.passes import fold_batchnorm
    from trtbuild.quant import fp16
    from trtbuild.quant.fp16_range import range_keeps

    t0 = time.perf_counter()
    module = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(100))
    rec: dict[str, Any] = {"note": note, "input_shape": list(shape)}
    clean, rec["export"] = _export(name, module, x, tmp / f"{name}.onnx")
    feed = {clean.graph.input[0].name: x.numpy()}
    s = Fp16Settings()
    half, info = fp16.convert(clean, s)
    rec["fp16_graph"] = info
    outs: dict[str, Any] = {"fp32": _ort(clean, feed)}
    outs["emulated"] = _ort(fp16.emulated(clean, s), feed)
    outs["ort_fp16"] = _ort(half, feed)
    folded, n_folded = fold_batchnorm(clean)
    keeps = range_keeps(folded, s, [feed])
    nodes = folded.graph.node
    rec["stage"] = {"batchnorm_folded": n_folded,
                    "auto_fp32": [{"node": nodes[k].name or f"#{k}", "op": nodes[k].op_type,
                                   "reason": why} for k, why in sorted(keeps.items())]}
    outs["stage_emulated"] = _ort(fp16.emulated(folded, s, frozenset(keeps)), feed)
    outs.update(_torch_runs(module, x, dev, name))

    ref = _flat(outs["fp32"])
    rec["variants"], rec["errors"] = {}, {}
    flat = {}
    for v in VARIANTS:
        if v not in outs:
            continue
        if isinstance(outs[v], str):
            rec["errors"][v] = outs[v]
            continue
        flat[v] = _flat(outs[v])
        if flat[v].shape != ref.shape:
            rec["errors"][v] = f"shape {flat[v].shape} != reference {ref.shape}"
            del flat[v]
            continue
        rec["variants"][v] = vs_reference(flat[v], ref)
    rec["reference"] = {"max_abs": float(np.abs(ref).max()), "nonfinite":
                        int((~np.isfinite(ref)).sum()), "size": int(ref.size)}
    for g in GPU_FP16:
        if g in flat:
            rec[f"vs_{g}"] = {v: vs_gpu(flat[v], flat[g])
                             for v in ("emulated", "ort_fp16") if v in flat}
    rec["verdict"] = verdict(name, rec)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def verdict(name: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Against `against` (gpu_fp16_bnfold where there is one, else gpu_fp16):
    closer: mean |emulated - gpu| <= mean |ort_fp16 - gpu| (where both are finite) and no
    more inf/nan disagreements; error_tracks_gpu: the emulation's mean error vs FP32 is
    within TRACK of the GPU's. overflow (planted model): gpu_fp16 shows inf/nan, the
    emulation at the same positions, ORT's FP16 run none, and the stage's path is finite."""
    v = rec["variants"]
    against = "gpu_fp16_bnfold" if "vs_gpu_fp16_bnfold" in rec else "gpu_fp16"
    vg = rec.get(f"vs_{against}")
    if not vg or "emulated" not in vg or "ort_fp16" not in vg:
        return {"ok": False, "why": f"no {against} output to compare"}
    e, o = vg["emulated"], vg["ort_fp16"]
    out: dict[str, Any] = {"against": against}
    out["mean_ratio_ort_over_emulated"] = (o["mean_abs_diff"] / e["mean_abs_diff"]
                                           if e["mean_abs_diff"] else None)
    out["closer"] = bool(e["nonfinite_mismatch"] <= o["nonfinite_mismatch"] and
                         e["mean_abs_diff"] is not None and o["mean_abs_diff"] is not None and
                         e["mean_abs_diff"] <= o["mean_abs_diff"])
    gpu_err = v[against]["mean_abs_err"]
    for k in ("emulated", "ort_fp16"):
        out[f"err_ratio_{k}_over_gpu"] = (v[k]["mean_abs_err"] / gpu_err
                                          if gpu_err and v[k]["mean_abs_err"] is not None
                                          else None)
    r = out["err_ratio_emulated_over_gpu"]
    out["error_tracks_gpu"] = r is not None and TRACK[0] <= r <= TRACK[1]
    ok = out["closer"] and out["error_tracks_gpu"]
    if name == "overflow":
        m = rec["vs_gpu_fp16"]["emulated"]
        out["gpu_shows_overflow"] = v["gpu_fp16"]["nonfinite"] > 0
        out["emulated_flags_it"] = v["emulated"]["nonfinite"] > 0
        out["same_positions"] = m["nonfinite_mismatch"] == 0
        out["ort_fp16_misses_it"] = v["ort_fp16"]["nonfinite"] == 0
        out["stage_fixes_it"] = ("stage_emulated" in v and v["stage_emulated"]["nonfinite"] == 0
                                 and (v["stage_emulated"]["cosine"] or 0) > 0.999)
        ok = ok and out["gpu_shows_overflow"] and out["emulated_flags_it"] \
            and out["same_positions"]
    out["ok"] = bool(ok)
    return out


# ----------------------------------------------------------------------------- report

def environment(dev: str) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    import trtbuild

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "numpy": np.__version__, "trtbuild": trtbuild.__version__,
           "gpu_device": dev, "cuda_available": torch.cuda.is_available()}
    if dev == "cuda":
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   fp16_reduced_precision_reduction=
                   torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)
    try:
        import onnx_graphsurgeon

        env["onnx_graphsurgeon"] = onnx_graphsurgeon.__version__
    except ImportError:
        env["onnx_graphsurgeon"] = None
    return env


def _g(x: Any, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def table(result: dict[str, Any]) -> str:
    dev = result["env"]["gpu_device"]
    gpu_label = "cuda" if dev == "cuda" else "torch CPU (no cuda)"
    lines = [f"'gpu' rows: {gpu_label}; reference: FP32 ONNX Runtime CPU; "
             "max|err|, cos over positions finite in both; cos(all) '-' when inf/nan", ""]
    head = (f"{'model':<9} {'variant':<17} {'max|err|':>9} {'mean|err|':>9} {'cos(all)':>10} "
            f"{'cos(fin)':>10} {'inf/nan':>9} {'max|y|':>9}")
    lines += [head, "-" * len(head)]
    for name, rec in result["models"].items():
        if "error" in rec:
            lines.append(f"{name:<9} ERROR {rec['error']}")
            continue
        for v, st in rec["variants"].items():
            nf = f"{st['nonfinite']}/{st['size']}" if st["nonfinite"] else "0"
            lines.append(f"{name:<9} {v:<17} {_g(st['max_abs_err']):>9} "
                         f"{_g(st['mean_abs_err']):>9} {_g(st['cosine'], '.6f'):>10} "
                         f"{_g(st['cosine_finite'], '.6f'):>10} {nf:>9} {_g(st['max_abs']):>9}")
        for v, err in rec["errors"].items():
            lines.append(f"{name:<9} {v:<17} {'no result: ' + err}")
    lines += ["", "Key numbers: distance to the GPU's real FP16 arithmetic, where both are finite; "
              "err/gpu: mean|y - fp32| over the GPU's", ""]
    head = (f"{'model':<9} {'against':<17} {'|emu-gpu| max':>13} {'mean':>9} "
            f"{'|ort-gpu| max':>13} {'mean':>9} {'ort/emu':>7} {'inf/nan mism emu,ort':>20} "
            f"{'err/gpu emu':>11} {'ort':>5}")
    lines += [head, "-" * len(head)]
    for name, rec in result["models"].items():
        v = rec.get("variants", {})
        for g in GPU_FP16:
            vg = rec.get(f"vs_{g}")
            if not vg:
                continue
            e, o = vg["emulated"], vg["ort_fp16"]
            ratio = (o["mean_abs_diff"] / e["mean_abs_diff"]
                     if e["mean_abs_diff"] and o["mean_abs_diff"] is not None else None)
            ratio_s = "exact" if e["mean_abs_diff"] == 0 else _g(ratio, ".2f")
            ge = v[g]["mean_abs_err"]
            er = [v[k]["mean_abs_err"] / ge if ge and v[k]["mean_abs_err"] is not None
                  else None for k in ("emulated", "ort_fp16")]
            mism = f"{e['nonfinite_mismatch']},{o['nonfinite_mismatch']}"
            lines.append(f"{name:<9} {g:<17} {_g(e['max_abs_diff']):>13} "
                         f"{_g(e['mean_abs_diff']):>9} {_g(o['max_abs_diff']):>13} "
                         f"{_g(o['mean_abs_diff']):>9} {ratio_s:>7} {mism:>20} "
                         f"{_g(er[0], '.2f'):>11} {_g(er[1], '.2f'):>5}")
    lines += ["", "Verdicts"]
    for name, rec in result["models"].items():
        vd = rec.get("verdict", {"ok": False, "why": rec.get("error", "?")})
        lines.append(f"{name:<9} {'OK' if vd['ok'] else 'FAIL'}  " + " ".join(
            f"{k}={_g(x, '.3g') if isinstance(x, float) else x}"
            for k, x in vd.items() if k != "ok"))
        st = rec.get("stage", {})
        if st.get("auto_fp32"):
            lines.append(f"{'':<9} fp16 stage keeps in FP32: "
                         + ", ".join(f"{a['node']} ({a['op']}: {a['reason']})"
                                     for a in st["auto_fp32"]))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 1 for resnet18 and encoder")
    ap.add_argument("--models", default="resnet18,overflow,encoder")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")

    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = False  # FP32 on the GPU means FP32
    torch.backends.cuda.matmul.allow_tf32 = False
    result: dict[str, Any] = {"env": environment(dev), "quick": args.quick, "models": {}}
    print(json.dumps(result["env"]), flush=True)
    models = _models(args.quick)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            build, shape, note = models[name]
            t = time.perf_counter()
            try:
                result["models"][name] = check_model(name, build, shape, note, dev, Path(tmp))
            except Exception as e:  # noqa: BLE001 - report it, go on with the next model
                traceback.print_exc()
                result["models"][name] = {"note": note, "error":
                                          f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"[{name}: {time.perf_counter() - t:.1f} s]", flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["ok"] = all(r.get("verdict", {}).get("ok") for r in result["models"].values())
    print(json.dumps(result))  # first: the table below must fit the tail of a log
    print()
    print(table(result))
    print()
    paths = [args.json] if args.json else []
    if os.environ.get("OUT"):
        paths.append(Path(os.environ["OUT"]) / "gpu_fp16_check.json")
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {p}")
    print(f"overall: {'OK' if result['ok'] else 'FAIL'} ({result['seconds']} s)")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
