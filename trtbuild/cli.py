"""Command line: parses arguments and composes stages; no stage logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import TrtBuildError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
DESCRIPTION = """\
trtbuild: PyTorch or ONNX -> cleaned, calibrated, quantized TensorRT engines, with proof.

pipeline: export -> clean -> calibrate -> quantize -> build -> cache -> validate -> bench
`trtbuild SRC ...` is short for `trtbuild build SRC ...`.

SRC is one of: model.onnx | path/to/file.py:factory | package.module:factory |
torchvision:NAME. A factory returns a torch.nn.Module or (module, example_inputs).

exit codes: 0 ok, 1 an accuracy/latency gate failed, 2 bad input, 3 missing capability."""


def command(name: str) -> Callable:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = fn
        return fn
    return register


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (the human summary goes to stderr)")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE",
                   help="input name and example shape, e.g. input:1x3x224x224 (repeatable, in "
                        "the model's input order); random example data of that shape is used")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="make the first axis of every input and output symbolic (default: on)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset for export (default: 17)")


def _calib_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration data (INT8)")
    g.add_argument("--calib", metavar="DIR", help="calibration samples: images (.png .jpg .jpeg "
                   ".bmp, preprocessed per DIR/preprocess.json and the flags below), .npy (one "
                   "sample or a batch on axis 0) or .npz (arrays keyed by input name)")
    g.add_argument("--data-loader-script", metavar="FILE.py:FN",
                   help="instead of --calib: FN() yields {input_name: array} dicts (Polygraphy's "
                        "convention)")
    g.add_argument("--calib-cache", type=Path, metavar="FILE",
                   help="reuse a TensorRT calibration cache; recalibrates (and says why) when it "
                        "lacks a tensor of this model")
    g.add_argument("--calib-method", choices=("entropy", "max", "percentile"), default="entropy",
                   help="threshold method (default: entropy = TensorRT EntropyCalibration2)")
    g.add_argument("--percentile", type=float, default=99.99, help="for --calib-method percentile")
    g.add_argument("--calib-batch-size", type=int, default=16, metavar="N")
    g.add_argument("--max-samples", type=int, default=0, metavar="N", help="0 = all")
    g = p.add_argument_group("image preprocessing (overrides DIR/preprocess.json)")
    g.add_argument("--resize", type=int, metavar="PX", help="resize the shorter side to PX")
    g.add_argument("--crop", type=int, metavar="PX", help="center crop PX x PX")
    g.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--scale", type=float, help="multiply pixel values (default 1/255)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean, after scaling")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std, after scaling")
    g.add_argument("--layout", choices=("NCHW", "NHWC"))
    g.add_argument("--dtype", choices=("float32", "float16"))


def _gate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy gates (exit 1 when not met)")
    g.add_argument("--val", metavar="DIR", help="held-out validation samples (same formats as "
                   "--calib; DIR/labels.csv `file,label` adds label accuracy)")
    g.add_argument("--min-top1-agreement", type=float, metavar="F", help="e.g. 0.99")
    g.add_argument("--min-cosine", type=float, metavar="F", help="e.g. 0.98")


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engines (TensorRT 10/11 or TensorRT-RTX)")
    g.add_argument("--target", choices=("auto", "onnx", "engine"), default="auto",
                   help="auto: build engines when a builder is installed, else stop after the "
                        "CPU stages and say why (exit 0); engine: a missing builder is exit 3; "
                        "onnx: never build engines")
    g.add_argument("--builder", choices=("auto", "tensorrt", "tensorrt-rtx"), default="auto",
                   help="auto: the first importable of tensorrt, tensorrt_rtx")
    g.add_argument("--arch", metavar="sm_86,sm_89",
                   help="target architectures, one engine each. TensorRT-RTX: any of sm_75, "
                        "sm_80, sm_86, sm_89, sm_120, sm_121 (no GPU needed; default "
                        "sm_86,sm_89); TensorRT: the local GPU (default) or ampere+")
    g.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN,OPT,MAX",
                   help="optimization profile, e.g. input:1x3x224x224,8x3x224x224,32x3x224x224 "
                        "(default: static shapes, or batch 1/8/32 for a dynamic batch)")
    g.add_argument("--workspace", type=int, default=2048, metavar="MB",
                   help="builder workspace memory pool limit (default 2048)")
    g.add_argument("--opt-level", type=int, default=3, choices=range(6), metavar="0-5",
                   help="builder optimization level (default 3)")
    g.add_argument("--hardware-compat", choices=("none", "ampere+", "same-cc"), default="none")
    g.add_argument("--version-compatible", action="store_true",
                   help="engines that newer TensorRT runtimes can load")
    g.add_argument("--plugins", nargs="+", default=[], metavar="LIB.so",
                   help="plugin libraries to load (also every *.so under plugins/)")
    g.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="engine cache (default: $XDG_CACHE_HOME/trtbuild/engines)")
    g.add_argument("--calibrator", choices=("qdq", "trt"), default="qdq",
                   help="INT8 engines: qdq (default) builds the Q/DQ model; trt (TensorRT <= 10 "
                        "only) lets IInt8EntropyCalibrator2 calibrate the FP32 graph from the "
                        "same --calib data")


def _fp16_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("FP16")
    g.add_argument("--fp16", action="store_true",
                   help="convert the graph to FP16 (FP32 kept for LayerNorm/Softmax/reductions "
                        "and Exp/Log/Pow) and check its accuracy on the CPU")
    g.add_argument("--fp16-io", action="store_true", help="FP16 graph inputs and outputs too")
    g.add_argument("--fp16-keep", default="", metavar="OP_OR_NODE,...",
                   help="more op types or node names to keep in FP32")
    g.add_argument("--fp16-mode", choices=("graph", "flag"), default="graph",
                   help="flag: TensorRT <= 10 only, BuilderFlag.FP16 on the FP32 graph")


def _bench_args(p: argparse.ArgumentParser, with_flag: bool = True) -> None:
    g = p.add_argument_group("latency")
    if with_flag:
        g.add_argument("--bench", action="store_true",
                       help="measure latency: engines on this GPU (CUDA events), else the ONNX "
                            "models with ONNX Runtime on the CPU; plus PyTorch eager")
    g.add_argument("--warmup", type=int, default=5, metavar="N")
    g.add_argument("--iterations", type=int, default=50, metavar="N")
    g.add_argument("--baseline", type=Path, metavar="OLD_report.json",
                   help="compare p50 latencies with an earlier report's bench results")
    g.add_argument("--max-regression", default="5%", metavar="PCT",
                   help="with --baseline: exit 1 when a p50 latency grew by more (default 5%%)")


def _build_args(p: argparse.ArgumentParser) -> None:
    """Flags of the later pipeline stages (precision, calibration, validation, engines)."""
    p.add_argument("--int8", action="store_true", help="calibrate and quantize (Q/DQ ONNX + "
                   "TensorRT calibration cache), then check accuracy on the CPU")
    p.add_argument("--fp32", action="store_true", help="also build an FP32 engine (the default "
                   "when neither --fp16 nor --int8 is given)")
    _fp16_args(p)
    _calib_args(p)
    _gate_args(p)
    _engine_args(p)
    _bench_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtbuild", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"trtbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("build", help="run the pipeline on SRC into an output directory")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--out", type=Path, help="output directory (default: trtbuild-out/<model>/)")
    _export_args(p)
    _build_args(p)
    _common(p)

    p = sub.add_parser("demo", help="the digits demo: build the bundled CNN with its calib data")
    p.add_argument("--out", type=Path, default=Path("trtbuild-out/digits"))
    _build_args(p)
    _common(p)

    p = sub.add_parser("export", help="PyTorch -> ONNX, checked against PyTorch's output")
    p.add_argument("src", metavar="SRC")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    _export_args(p)
    _common(p)

    p = sub.add_parser("clean", help="GraphSurgeon cleanup passes (fold, no-ops, shapes)")
    p.add_argument("model", type=Path, metavar="IN.onnx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    _common(p)

    p = sub.add_parser("calibrate", help="INT8 calibration of an ONNX model: calib.cache, "
                       "model.int8.onnx (Q/DQ) and report.json in OUTDIR")
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    _calib_args(p)
    _common(p)

    p = sub.add_parser("validate", help="accuracy of CANDIDATE.onnx against REFERENCE.onnx "
                       "on --val data (Polygraphy, ONNX Runtime on the CPU)")
    p.add_argument("reference", type=Path, metavar="REFERENCE.onnx")
    p.add_argument("candidate", type=Path, metavar="CANDIDATE.onnx")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="int8",
                   help="selects Polygraphy's default tolerances")
    _calib_args(p)
    _gate_args(p)
    _common(p)

    p = sub.add_parser("bench", help="latency of MODEL.onnx (ONNX Runtime, CPU) or ENGINE (GPU) "
                       "at each profile shape; compare with --baseline")
    p.add_argument("model", type=Path, metavar="MODEL.onnx|ENGINE")
    p.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN,OPT,MAX")
    p.add_argument("--reference", type=Path, metavar="MODEL.onnx",
                   help="for an engine: the ONNX model that gives input names and shapes")
    p.add_argument("-o", "--output", type=Path, metavar="report.json",
                   help="write the results as a report (usable as a later --baseline)")
    _bench_args(p, with_flag=False)
    _common(p)

    p = sub.add_parser("info", help="GPU, compute capability, TensorRT/CUDA versions, and the "
                       "engine cache key prefix for this machine")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    _common(p)

    p = sub.add_parser("cache", help="the engine cache: ls | verify | prune")
    p.add_argument("action", choices=("ls", "verify", "prune"))
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    p.add_argument("--max-age-days", type=float, help="prune: remove entries older than this")
    p.add_argument("--max-size-mb", type=float, help="prune: then the oldest until under this")
    _common(p)

    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS_ALL():
        argv.insert(0, "build")
    args = build_parser().parse_args(argv)
    if not args.command:
        build_parser().print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="trtbuild: %(levelname)s: %(message)s" if not args.verbose
                        else "%(levelname)s %(name)s: %(message)s")
    from . import commands  # noqa: F401  (registers the command functions)

    try:
        return COMMANDS[args.command](args)
    except TrtBuildError as e:
        if args.verbose:
            raise
        print(f"trtbuild: error: {e.message}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("trtbuild: interrupted", file=sys.stderr)
        return 130


def COMMANDS_ALL() -> set[str]:
    return {"build", "demo", "export", "clean", "calibrate", "validate", "info", "cache", "bench",
            "help"}


def emit(args: argparse.Namespace, data: dict[str, Any], summary: list[str]) -> None:
    """JSON on stdout with --json (summary then on stderr), else the summary on stdout."""
    stream = sys.stderr if args.json else sys.stdout
    for line in summary:
        print(line, file=stream)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
