"""The parser: one argument group per stage; each flag's dest is the API option it sets
(trtbuild.config.OPTIONS), and defaults live in trtbuild.config only (flags default to
None = "not given")."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any, NoReturn

from ..config import (
    BENCH_DEFAULTS,
    BUILDERS,
    CALIB_DEFAULTS,
    CALIB_METHODS,
    CALIBRATORS,
    DATA_DEFAULTS,
    ENGINE_DEFAULTS,
    EXPORT_DEFAULTS,
    FP16_MODES,
    HARDWARE_COMPAT,
    LAYOUTS,
    OPTIONS,
    PRECISIONS,
    PREPROCESS_KEYS,
    TARGETS,
    TOP_LEVEL,
)
from ..quant.bias import BIAS_SAMPLES
from ..trt.backend import DEFAULT_RTX_ARCHS, RTX_ARCHS
from ..version import __version__

DESCRIPTION = """\
trtbuild: PyTorch or ONNX -> cleaned, calibrated, quantized TensorRT engines, with proof.

pipeline: export -> clean -> calibrate -> quantize -> build -> cache -> validate -> bench
`trtbuild SRC ...` is short for `trtbuild build SRC ...`; `trtbuild help COMMAND` explains one.

SRC is one of: model.onnx | path/to/file.py:factory | package.module:factory |
torchvision:NAME. A factory returns a torch.nn.Module or (module, example_inputs).

Options that run code: a FILE.py:FN or module:FN SRC, --data-loader-script,
--metric-script (and a release manifest's src, calib, val and metric_script keys) import
and call Python; --plugins loads shared libraries into the builder. Give only files you trust.

exit codes: 0 ok, 1 an accuracy/latency gate failed, 2 bad input, 3 missing capability,
4 internal error (a bug, or a crash in a library trtbuild drives), 130 interrupted."""


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but a failure's one line (and --json's output): no "
                        "progress, stage lines or warnings")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (the human summary goes to stderr)")


def export_group(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("export (torch SRCs)")
    g.add_argument("--input", dest="inputs", action="append", metavar="NAME:SHAPE",
                   help="input name and example shape, e.g. input:1x3x224x224 (repeatable, in "
                        "the model's input order); random example data of that shape is used")
    g.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction,
                   help="make the first axis of every input and output symbolic (default: on)")
    g.add_argument("--opset", type=int, help=f"ONNX opset (default {EXPORT_DEFAULTS.opset})")


def data_group(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading --calib and --val data")
    g.add_argument("--calib-batch-size", type=int, metavar="N",
                   help=f"samples per ONNX Runtime run (default {DATA_DEFAULTS.batch_size})")
    g.add_argument("--max-samples", type=int, metavar="N",
                   help="calibrate on at most N samples (default: all); --val is always "
                        "read whole (without --val, the capped calibration data is judged)")
    g = p.add_argument_group("image preprocessing (overrides DIR/preprocess.json)")
    g.add_argument("--resize", type=int, metavar="PX", help="resize the shorter side to PX")
    g.add_argument("--crop", type=int, metavar="PX", help="center crop PX x PX")
    g.add_argument("--grayscale", action=argparse.BooleanOptionalAction)
    g.add_argument("--scale", type=float, help="multiply pixel values (default 1/255)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean, after scaling")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std, after scaling")
    g.add_argument("--layout", choices=LAYOUTS)
    g.add_argument("--dtype", choices=("float32", "float16"))


def calib_group(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (INT8)")
    g.add_argument("--calib", metavar="DIR", help="calibration samples: images (.png .jpg .jpeg "
                   ".bmp, preprocessed per DIR/preprocess.json and the flags below), .npy (one "
                   "sample or a batch on axis 0) or .npz (arrays keyed by input name)")
    g.add_argument("--data-loader-script", metavar="FILE.py:FN",
                   help="instead of --calib: FN() yields {input_name: array} dicts (Polygraphy's "
                        "convention); FILE.py:FN(key=value, ...) passes literal arguments, and FN "
                        "gets the model's inputs as inputs= when it takes them. Ready loaders for "
                        "image folders, COCO sets, JSONL text, audio and video: calib/README.md. "
                        "Runs the script's code")
    g.add_argument("--calib-cache", type=Path, metavar="FILE",
                   help="reuse a TensorRT calibration cache; recalibrates (and says why) when it "
                        "lacks a tensor of this model")
    g.add_argument("--calib-method", choices=CALIB_METHODS,
                   help=f"threshold method (default {CALIB_DEFAULTS.method}). entropy: TensorRT "
                        "EntropyCalibration2; max; percentile; mse: least quantization error; "
                        "auto: per tensor, whichever of these quantizes it with the least "
                        "error (report.json records each tensor's method and amax)")
    g.add_argument("--high-precision", choices=("fp16", "fp32"),
                   help="precision of the layers INT8 leaves in float, in the same graph "
                        "(default fp16, FP32 kept where FP16 cannot hold the values; fp32: "
                        "INT8 Q/DQ + FP32 only)")
    g.add_argument("--weight-rounding", choices=("gptq", "nearest"),
                   help="how INT8 weights round onto their per-channel grid (default "
                        f"{CALIB_DEFAULTS.weight_rounding}). gptq: each layer's rounding "
                        "errors are compensated within the layer against its calibration "
                        "inputs (GPTQ), so its output error is least; nearest: each weight to "
                        "its nearest step")
    g.add_argument("--bias-correction", choices=("on", "off"),
                   help="empirical bias correction (default "
                        f"{CALIB_DEFAULTS.bias_correction}): every Conv/Gemm bias in graph "
                        "order, one after the other, absorbs the shift INT8 causes in its "
                        f"output's mean on the first {BIAS_SAMPLES} calibration samples (one "
                        "inference pass per layer; the graph keeps its shape). Measured on "
                        "PP-OCRv4 rec and YOLOv8n: better on data of other generators in most "
                        "runs, worse in some (README)")
    g.add_argument("--percentile", type=float,
                   help=f"for --calib-method percentile (default {CALIB_DEFAULTS.percentile})")


def gate_group(p: argparse.ArgumentParser, with_val: bool = True) -> None:
    g = p.add_argument_group("accuracy gates (exit 1 when not met)")
    if with_val:
        g.add_argument("--val", metavar="DIR", help="held-out validation samples (same formats "
                       "as --calib; DIR/labels.csv `file,label` adds label accuracy)")
    g.add_argument("--min-top1-agreement", type=float, metavar="F", help="e.g. 0.99")
    g.add_argument("--min-cosine", type=float, metavar="F",
                   help="e.g. 0.98: per output, the mean per-sample cosine and the per-channel "
                        "cosine (worst axis); outputs with one value per sample: correlation")
    g.add_argument("--gate", dest="gates", action="append", metavar="NAME>=X",
                   help="any metric of the validation record or score of --metric-script "
                        "(e.g. strings_equal>=0.95, output.max_abs_err<=0.1, "
                        "label_accuracy>=0.99); also > < <=; repeatable")
    g.add_argument("--metric-script", metavar="FILE.py:FN",
                   help="task metric: FN(reference, candidate, names) -> {score: value}, "
                        "given {output: array} (batch axis first, all samples) and the "
                        "sample names; the scores go to report.json and --gate. Runs the "
                        "script's code")


def fp16_group(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("FP16")
    g.add_argument("--fp16", action="store_true",
                   help="convert the graph to FP16 (FP32 kept for LayerNorm/Softmax/reductions "
                        "and Exp/Log/Pow) and check its accuracy on the CPU")
    g.add_argument("--fp16-io", action="store_true", default=None,
                   help="FP16 graph inputs and outputs too")
    g.add_argument("--fp16-keep", metavar="OP_OR_NODE,...",
                   help="more op types or node names to keep in FP32")
    g.add_argument("--fp16-mode", choices=FP16_MODES,
                   help="graph (default); flag: TensorRT <= 10 only, BuilderFlag.FP16 on the "
                        "FP32 graph")


def engine_group(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engines (TensorRT 10/11 or TensorRT-RTX)")
    g.add_argument("--target", choices=TARGETS,
                   help="auto (default): build engines when a builder is installed, else stop "
                        "after the CPU stages and say why (exit 0); engine: a missing builder "
                        "is exit 3; onnx: never build engines")
    g.add_argument("--builder", choices=BUILDERS,
                   help="auto (default): the first importable of tensorrt, tensorrt_rtx")
    g.add_argument("--arch", dest="archs", metavar="sm_86,sm_89",
                   help=f"target architectures, one engine each. TensorRT-RTX: any of "
                        f"{', '.join(RTX_ARCHS)} (no GPU needed; default "
                        f"{','.join(DEFAULT_RTX_ARCHS)}); TensorRT: the local GPU (default) or "
                        "ampere+. native = this machine's GPU")
    engine_shapes(g)
    g.add_argument("--workspace", dest="workspace_mb", type=int, metavar="MB",
                   help=f"builder workspace limit (default {ENGINE_DEFAULTS.workspace_mb})")
    g.add_argument("--opt-level", type=int, metavar="0-5",
                   help=f"builder optimization level (default {ENGINE_DEFAULTS.opt_level})")
    g.add_argument("--hardware-compat", choices=HARDWARE_COMPAT, help="default none")
    g.add_argument("--version-compatible", action="store_true", default=None,
                   help="engines that newer TensorRT runtimes can load")
    g.add_argument("--plugins", nargs="+", metavar="LIB.so|DIR",
                   help="plugin libraries to load (a directory: its *.so files); none by "
                        "default. Their code runs in the builder's process")
    cache_flags(g)
    g.add_argument("--calibrator", choices=CALIBRATORS,
                   help="INT8 engines: qdq (default) builds the Q/DQ model; trt (TensorRT <= 10 "
                        "only) lets IInt8EntropyCalibrator2 calibrate the FP32 graph from the "
                        "same --calib data")


def engine_shapes(g: Any) -> None:
    g.add_argument("--shapes", action="append", metavar="NAME:MIN,OPT,MAX",
                   help="optimization profile, e.g. input:1x3x224x224,8x3x224x224,32x3x224x224 "
                        "(default: static shapes, or batch 1/8/32 for a dynamic batch)")


def bench_group(p: argparse.ArgumentParser, with_flag: bool = True) -> None:
    g = p.add_argument_group("latency")
    if with_flag:
        g.add_argument("--bench", action="store_true", default=None,
                       help="measure latency: engines on this GPU (CUDA events), else the ONNX "
                            "models with ONNX Runtime on the CPU; plus PyTorch eager")
    g.add_argument("--warmup", type=int, metavar="N",
                   help=f"default {BENCH_DEFAULTS.warmup}")
    g.add_argument("--iterations", type=int, metavar="N",
                   help=f"timed runs per model and shape, at most (default "
                        f"{BENCH_DEFAULTS.iterations})")
    g.add_argument("--duration", type=float, metavar="S",
                   help="seconds of timed runs per model and shape, at most: timing stops at "
                        "--iterations runs or S seconds, whichever comes first, after at least "
                        f"one run; warm-up stops at --warmup runs or S/5 s (default "
                        f"{BENCH_DEFAULTS.duration:g})")
    g.add_argument("--baseline", type=Path, metavar="OLD_report.json",
                   help="compare p50 latencies with an earlier report's bench results")
    g.add_argument("--max-regression", metavar="PCT",
                   help="with --baseline: exit 1 when a p50 latency grew by more (default "
                        f"{100 * BENCH_DEFAULTS.max_regression:g}%%)")


def cache_flags(g: Any) -> None:
    g.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="the cache of engines and of the CPU stages' outputs (default: "
                        "$XDG_CACHE_HOME/trtbuild/engines)")
    g.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="recompute every stage and build every engine; read and store nothing "
                        "in the cache")


def precision_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", action="store_true", help="calibrate and quantize (Q/DQ ONNX + "
                   "TensorRT calibration cache), then check accuracy on the CPU")
    p.add_argument("--fp32", action="store_true", help="also build an FP32 engine (the default "
                   "when neither --fp16 nor --int8 is given)")


def pipeline_groups(p: argparse.ArgumentParser) -> None:
    """Flags of the stages after export (precision, data, calibration, gates, engines)."""
    precision_flags(p)
    fp16_group(p)
    calib_group(p)
    data_group(p)
    gate_group(p)
    g = p.add_argument_group("mixed precision")
    g.add_argument("--accuracy-target", metavar="NAME>=X",
                   help="with --int8: when the INT8 model misses this (a --gate expression, "
                        "e.g. cosine_mean>=0.99 or strings_equal>=0.95), measure each "
                        "quantized region's cost on --val and return the fewest regions to "
                        "FP16/FP32 until it holds; also a gate")
    engine_group(p)
    bench_group(p)


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped option (its subcommands are Parsers too:
    add_subparsers makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            known = sorted(self._options())
            hints = []
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1)
                if word.startswith("-") and close:
                    hints.append((close[0], word))
            if len(hints) == 1:
                message += f" (did you mean {hints[0][0]}?)"
            elif hints:
                message += f" (did you mean {', '.join(f'{a} for {b}' for a, b in hints)}?)"
        super().error(message)

    def _options(self) -> set[str]:
        """Every option string of this parser and its subcommands."""
        found = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found |= set(sub._option_string_actions)
        return found


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="trtbuild", description=DESCRIPTION,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"trtbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("build", help="run the pipeline on SRC into an output directory")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--out", type=Path, help="output directory (default: trtbuild-out/<model>/)")
    export_group(p)
    pipeline_groups(p)
    common(p)

    p = sub.add_parser("demo", help="the digits demo: build the bundled CNN with its data")
    p.add_argument("--out", type=Path, help="output directory (default: trtbuild-out/digits/)")
    pipeline_groups(p)
    common(p)

    p = sub.add_parser("export", help="PyTorch -> ONNX, checked against PyTorch's output")
    p.add_argument("src", metavar="SRC")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    export_group(p)
    common(p)

    p = sub.add_parser("clean", help="GraphSurgeon cleanup passes (fold, no-ops, shapes)")
    p.add_argument("model", type=Path, metavar="IN.onnx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    common(p)

    p = sub.add_parser("calibrate", help="INT8 calibration of an ONNX model: model.clean.onnx, "
                       "calib.cache, model.int8.onnx (Q/DQ) and report.json in OUTDIR")
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    calib_group(p)
    data_group(p)
    cache_flags(p.add_argument_group("cache"))
    common(p)

    p = sub.add_parser("validate", help="accuracy of CANDIDATE.onnx against REFERENCE.onnx "
                       "on --val data (Polygraphy, ONNX Runtime on the CPU); images are read "
                       "as the build that wrote CANDIDATE read them (its report.json), unless "
                       "the --val folder has a preprocess.json; flags override either")
    p.add_argument("reference", type=Path, metavar="REFERENCE.onnx")
    p.add_argument("candidate", type=Path, metavar="CANDIDATE.onnx")
    p.add_argument("--precision", choices=PRECISIONS, default="int8",
                   help="selects Polygraphy's default tolerances (default int8)")
    gate_group(p)
    data_group(p)
    common(p)

    p = sub.add_parser("bench", help="latency of MODEL.onnx (ONNX Runtime, CPU) or ENGINE (GPU, "
                       "with the runtime that built it) at each profile shape; --baseline "
                       "compares")
    p.add_argument("model", type=Path, metavar="MODEL.onnx|ENGINE")
    engine_shapes(p)
    p.add_argument("--reference", type=Path, metavar="MODEL.onnx",
                   help="for an engine: the ONNX model that gives input names and shapes")
    p.add_argument("--builder", choices=BUILDERS, default="auto",
                   help="for an engine not listed in a trtbuild report.json: its runtime")
    p.add_argument("-o", "--output", type=Path, metavar="report.json",
                   help="write the results as a report (usable as a later --baseline)")
    bench_group(p, with_flag=False)
    common(p)

    p = sub.add_parser("release", help="a release from a TOML manifest: every model x "
                       "precision x arch on a local pool of workers (or Ray tasks), "
                       "resumable, with release.json and release.html")
    p.add_argument("manifest", type=Path, metavar="MANIFEST.toml")
    p.add_argument("--out", type=Path, help="output directory (default: "
                   "trtbuild-out/release-<manifest name>/); rerun to resume")
    p.add_argument("--baseline", type=Path, metavar="OLD/release.json",
                   help="compare engine sizes and accuracy with a previous release")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--workers", type=int, metavar="N",
                     help="worker processes (default: min(cores, jobs); a job waits while free "
                          "memory is below the largest job's peak RSS)")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="jobs as Ray tasks: alone, on a local Ray runtime; with HOST:PORT, on "
                          "that cluster (pip install 'trtbuild[ray]'; put it after MANIFEST)")
    common(p)

    p = sub.add_parser("info", help="GPU, compute capability, TensorRT versions, and the "
                       "engine cache key prefix for this machine")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    common(p)

    p = sub.add_parser("cache", help="the engine cache: ls | verify | prune")
    p.add_argument("action", choices=("ls", "verify", "prune"),
                   help="ls: one row per entry (model, precision, arch, builder, size, age) "
                        "and the total; verify: re-hash every entry, quarantine damaged ones "
                        "(exit 1 if any); prune: remove old entries")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    p.add_argument("--arch", metavar="SM", help="ls: only engines for this arch (sm_86)")
    p.add_argument("--model", metavar="TEXT", help="ls: only entries whose source model "
                                                    "contains TEXT")
    p.add_argument("--max-age-days", type=float, help="prune: remove entries older than this")
    p.add_argument("--max-size-mb", type=float, help="prune: then the oldest until under this")
    common(p)

    p = sub.add_parser("inspect", help="what an engine is: builder and version, target "
                       "arch, precision, I/O and profile shapes, source model, from its cache "
                       "record (no GPU needed)")
    p.add_argument("target", metavar="ENGINE_OR_KEY",
                   help="an engine file (OUT/engines/sm_86/model.int8.engine, or any file "
                        "whose sha256 a cache entry or report.json records) or a cache key "
                        "(8+ leading hex digits)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    common(p)

    p = sub.add_parser("help", help="this help, or `trtbuild help COMMAND` for one command")
    p.add_argument("topic", nargs="?", metavar="COMMAND")
    parser.set_defaults(subparsers=dict(sub.choices))  # the one list of commands
    return parser


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{name: subparser}."""
    return parser.get_default("subparsers")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The API options the parsed flags give (only those given; config has the defaults)."""
    given = {k: v for k, v in vars(args).items()
             if (k in OPTIONS or k in TOP_LEVEL) and v is not None}
    for flag in ("fp32", "fp16", "int8"):  # store_true: False means "not given"
        if given.get(flag) is False:
            del given[flag]
    if getattr(args, "data_loader_script", None):
        from ..errors import TrtBuildError

        if args.calib:
            raise TrtBuildError("give --calib or --data-loader-script, not both")
        given["calib"] = args.data_loader_script
    pre = {k: getattr(args, k) for k in PREPROCESS_KEYS if getattr(args, k, None) is not None}
    if pre:
        given["preprocess"] = pre
    return given
